FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY tasks tasks
COPY channels channels
COPY config config
RUN pip install --no-cache-dir .
USER nobody
