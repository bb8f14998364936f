"""Operating the bulk load's sync states: the operations the Opportunity syncs page and the
``opportunity-sync`` command line share (:mod:`.operations`), and that command line (:mod:`.cli`).
"""
