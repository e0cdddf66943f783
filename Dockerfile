# hybridgate gateway (and, with another command, the local-model server).
FROM python:3.11-slim
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY service service
COPY common common
COPY router router
COPY policies policies
COPY backends backends
COPY requestlog requestlog
COPY state state
COPY local_model local_model
COPY migrations migrations
# no C compiler needed: every dependency installs from wheels
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 && pip install .
EXPOSE 8080
CMD ["hybridgate", "serve", "--host", "0.0.0.0", "--port", "8080", "--migrate"]
