# syntax=docker/dockerfile:1
#
# Trainyard: one image for the API, the workers and the one-shot migration
# (docker-compose.yml runs each with its own `trainyard ...` command).
#
# torch comes from its own wheel index, the CPU one by default. For the GPU
# worker build the same Dockerfile against a CUDA index; `device: auto` then
# picks the GPU:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t trainyard:gpu .
# `docker compose --profile gpu build` does exactly that for the gpu-worker service.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRAINYARD_HOME=/var/lib/trainyard

RUN groupadd --system --gid 10001 trainyard \
 && useradd --system --uid 10001 --gid trainyard --home-dir /var/lib/trainyard \
        --create-home --shell /usr/sbin/nologin trainyard

WORKDIR /srv/trainyard

# The biggest layer first, and apart: torch from the chosen index. pyproject.toml
# pins the same torch==2.13.0, which the local-version wheel (+cpu, +cu128) satisfies.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0

# The other dependencies, cached apart from the source: an editable install over
# placeholder packages. Editable matters: app/services/admin.py finds alembic.ini and
# migrations/ (and trainyard/cli.py finds examples/) in this tree, not in site-packages.
COPY pyproject.toml README.md ./
RUN mkdir app worker trainyard \
 && touch app/__init__.py worker/__init__.py trainyard/__init__.py \
 && pip install -e ".[api,worker]"

COPY alembic.ini ./
COPY migrations/ migrations/
COPY examples/ examples/
COPY worker/ worker/
COPY app/ app/
COPY trainyard/ trainyard/

# Fail the build, not the deployment, if the CLI cannot find its migrations.
RUN python -c "from app.services.admin import SOURCE_ROOT as R; assert (R / 'alembic.ini').is_file() and (R / 'migrations' / 'env.py').is_file(), R" \
 && trainyard --help > /dev/null

USER trainyard

EXPOSE 8000

# No HEALTHCHECK here: the workers and the migration share this image and serve
# no HTTP; docker-compose.yml gives the api service its own healthcheck.
CMD ["trainyard", "api"]
