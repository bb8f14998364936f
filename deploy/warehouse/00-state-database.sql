-- The database the syncs keep their state in (connection opportunity_state), shared by every
-- worker and apart from the warehouse tables the syncs read.
CREATE DATABASE opportunity_state OWNER warehouse;
