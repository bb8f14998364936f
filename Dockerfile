# The official Airflow image of the locked version, with this provider installed from the
# repository. The committed lock is passed as constraints: pip installs only what the provider
# needs, at exactly the versions the test suite ran with, and nothing else from the lock
# (its development tools are constraints, not requirements).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11
FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}

ARG AIRFLOW_VERSION
USER root
RUN install -d -o airflow -g 0 /opt/airflow-opportunity-provider
USER airflow
WORKDIR /opt/airflow-opportunity-provider
COPY --chown=airflow:0 requirements-dev.lock pyproject.toml README.md ./
COPY --chown=airflow:0 airflow_opportunity_provider ./airflow_opportunity_provider

# Naming apache-airflow with its version, as the image's documentation advises, makes pip fail
# rather than move Airflow itself should the lock and the base image ever disagree.
RUN pip install --no-cache-dir \
        --constraint requirements-dev.lock \
        "apache-airflow==${AIRFLOW_VERSION}" \
        ".[postgres,openlineage]" \
    && python -c "import airflow, airflow_opportunity_provider as p; \
assert airflow.__version__ == '${AIRFLOW_VERSION}', airflow.__version__; print('provider', p.__version__)"

WORKDIR /opt/airflow
