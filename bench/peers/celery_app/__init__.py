"""Celery 5 peer: RabbitMQ broker (py-amqp), Redis result backend; app.py holds the settings."""
