# The envmon image: one image for every process (`migrate`, `ingest`, `api`); the compose
# service picks the verb. Health checks are defined in docker-compose.yml, not here.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The user the processes run as. data/ exists and belongs to it, so that a named volume
# mounted there (the ingestor's spool) starts out writable by it.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/envmon envmon \
    && install -d -o envmon -g envmon /var/lib/envmon/data

WORKDIR /src

# Dependencies first, read from pyproject.toml alone, so that a change to the sources
# reuses this layer. Every dependency ships wheels: no compiler needed.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself, installed by root into the system site-packages (so the user that
# runs it cannot change it), and the sources removed.
COPY . ./
RUN pip install --no-deps . \
    && cd / && rm -rf /src

USER envmon
WORKDIR /var/lib/envmon

ENTRYPOINT ["envmon"]
CMD ["--help"]
