"""Dramatiq 2 peer: RabbitMQ broker (pika), Redis results through the Results middleware."""
