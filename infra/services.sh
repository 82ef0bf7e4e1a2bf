#!/usr/bin/env bash
# Makes sure RabbitMQ and Redis answer on the addresses in the settings; starts the installed
# servers when they are stopped, and says what to install when they are missing.
set -euo pipefail

RABBITMQ_HOST=${RABBITMQ_HOST:-127.0.0.1}
RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
REDIS_HOST=${REDIS_HOST:-127.0.0.1}
REDIS_PORT=${REDIS_PORT:-6379}

listening() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() {  # name host port seconds
  for _ in $(seq 1 $(( $4 * 5 ))); do
    listening "$2" "$3" && return 0
    sleep 0.2
  done
  echo "services: $1 did not come up on $2:$3 within $4 s" >&2
  return 1
}

ensure_redis() {
  listening "$REDIS_HOST" "$REDIS_PORT" && return 0
  if ! command -v redis-server >/dev/null; then
    echo "services: Redis is not running and not installed. Install it with:" >&2
    echo "    sudo apt-get install -y redis-server      # Debian/Ubuntu" >&2
    echo "    brew install redis                        # macOS" >&2
    return 1
  fi
  echo "services: starting Redis on $REDIS_HOST:$REDIS_PORT"
  redis-server --daemonize yes --bind "$REDIS_HOST" --port "$REDIS_PORT" --save "" --appendonly no >/dev/null
  wait_for Redis "$REDIS_HOST" "$REDIS_PORT" 15
}

ensure_rabbitmq() {
  listening "$RABBITMQ_HOST" "$RABBITMQ_PORT" && return 0
  if ! command -v rabbitmq-server >/dev/null; then
    echo "services: RabbitMQ is not running and not installed. Install it with:" >&2
    echo "    sudo apt-get install -y rabbitmq-server   # Debian/Ubuntu" >&2
    echo "    brew install rabbitmq                     # macOS" >&2
    return 1
  fi
  echo "services: starting RabbitMQ on $RABBITMQ_HOST:$RABBITMQ_PORT"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_for RabbitMQ "$RABBITMQ_HOST" "$RABBITMQ_PORT" 90
}

ensure_redis
ensure_rabbitmq
echo "services: RabbitMQ $RABBITMQ_HOST:$RABBITMQ_PORT and Redis $REDIS_HOST:$REDIS_PORT are up"
