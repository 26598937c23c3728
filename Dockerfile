# syntax=docker/dockerfile:1
# One image, two services (docker-compose.yml): the chat core (`python server.py`, the default
# command) and the web app (`python -m app`). The code and its dependencies come from
# pyproject.toml; the data (users.json, history.json, journal, tokens) lives in the /data volume.

# --- build: turn the source into a wheel (nothing of this stage reaches the image) -----------
FROM python:3.11-slim AS build
WORKDIR /src
# gcc and mypy compile the core's request path into the wheel (legacy_socket_server/native.py).
# Should that fail, the wheel holds the Python modules alone: the same core, slower.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir "mypy>=1.11" "mypy_extensions>=1.0"
COPY pyproject.toml README.md ./
COPY legacy_socket_server ./legacy_socket_server
COPY app ./app
RUN (python -m legacy_socket_server.native_build || echo "not compiled: the Python modules run") \
    && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CHAT_DATA_DIR=/data

# The wheel is bind-mounted, not copied, so no layer keeps it. Every dependency has a binary
# wheel for this Python and the core's compiled modules come in ours, so no compiler is
# installed here; setuptools/wheel are only build tools.
# /data is created owned by the runtime user: Docker copies that ownership into an empty named
# volume on its first mount, so the non-root core can write its files there.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl \
    && pip uninstall --yes --quiet setuptools wheel \
    && groupadd --system --gid 10001 chat \
    && useradd --system --uid 10001 --gid chat --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin chat \
    && mkdir /data \
    && chown chat:chat /data

# `python server.py` is how the core has always been started (the code is installed above).
WORKDIR /app
COPY server.py ./

USER 10001:10001
EXPOSE 5050 5051 8080
CMD ["python", "server.py", "--host", "0.0.0.0", "--data-dir", "/data"]
