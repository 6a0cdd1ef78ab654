"""Connecting to RabbitMQ: the Dramatiq broker, plain pika connections, and their errors.

Every service builds its broker here, so queues, encoding and middleware are the same
everywhere. Dramatiq's defaults are replaced on purpose: no handler here runs long, and
retries are explicit per actor.
"""
from __future__ import annotations

import urllib.parse
from typing import Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from pika.adapters.utils.connection_workflow import AMQPConnectorException
from dramatiq.middleware import AgeLimit, Callbacks, Pipelines, Retries, ShutdownNotifications, TimeLimit

from dstack import defaults
from dstack.errors import BrokerUnavailable
from dstack.messages import MsgpackEncoder, to_payload


def connection_parameters(url: str, *, heartbeat: int = 30) -> pika.URLParameters:
    """pika parameters for ``url`` with short connect timeouts and a heartbeat (seconds)."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.socket_timeout = defaults.BROKER_CONNECT_TIMEOUT
    params.blocked_connection_timeout = 60
    params.connection_attempts = 1
    return params


def describe(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or 5672
    return f"amqp://{host}:{port}{parts.path or '/'}"


def connect(url: str) -> pika.BlockingConnection:
    """A blocking pika connection to ``url``.

    Raises:
        BrokerUnavailable: RabbitMQ does not accept the connection; the message says where.
    """
    try:
        return pika.BlockingConnection(connection_parameters(url))
    except (pika.exceptions.AMQPError, AMQPConnectorException) as e:
        raise BrokerUnavailable(
            f"cannot reach RabbitMQ at {describe(url)} ({type(e).__name__}{': ' + str(e) if str(e) else ''}); "
            "start it (`rabbitmq-server -detached`) or set DSTACK_BROKER_URL") from None


def close_quietly(connection: pika.BlockingConnection) -> None:
    """Close ``connection``; one the broker already dropped is closed enough."""
    try:
        connection.close()
    except pika.exceptions.AMQPError:
        pass


def make_broker(url: str) -> RabbitmqBroker:
    """The Dramatiq broker every dstack service uses, also made the global one.

    Messages are msgpack-encoded, queues durable, messages persistent and publishes
    confirmed by RabbitMQ.
    """
    dramatiq.set_encoder(MsgpackEncoder())
    middleware = [AgeLimit(), TimeLimit(), ShutdownNotifications(), Callbacks(), Pipelines(),
                  Retries(max_retries=3, min_backoff=1000, max_backoff=30_000)]
    broker = RabbitmqBroker(url=url, confirm_delivery=True, middleware=middleware)
    dramatiq.set_broker(broker)
    return broker


def send(broker: RabbitmqBroker, queue_name: str, actor_name: str, message: Any) -> None:
    """Enqueue a typed ``message`` for the Dramatiq actor ``actor_name`` on ``queue_name``.

    Raises:
        BrokerUnavailable: RabbitMQ refused or dropped the connection.
    """
    broker.declare_queue(queue_name)
    try:
        broker.enqueue(dramatiq.Message(queue_name=queue_name, actor_name=actor_name,
                                        args=(to_payload(message),), kwargs={}, options={}))
    except dramatiq.errors.ConnectionError as e:
        raise BrokerUnavailable(f"cannot publish to RabbitMQ: {e}") from None

