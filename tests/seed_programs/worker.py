# worker.py
import asyncio
import json
import os
import signal
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, AckPolicy, DeliverPolicy, StreamConfig

async def setup_stream(js):
    """Create or update the orders stream."""
    stream_config = StreamConfig(
        name="ORDERS",
        subjects=["orders.>"],
        retention="workqueue",
    )

    try:
        await js.add_stream(stream_config)
        print("Stream ORDERS created")
    except Exception as e:
        print(f"Stream might exist: {e}")

async def create_consumer(js):
    """Create consumer group for distributed processing."""
    consumer_config = ConsumerConfig(
        durable_name="order-processors",
        deliver_group="order-processors",  # Queue group for load balancing
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30,  # seconds
        max_deliver=5,
        filter_subject="orders.>",
    )

    try:
        await js.add_consumer("ORDERS", consumer_config)
        print("Consumer group created")
    except Exception as e:
        print(f"Consumer might exist: {e}")

async def process_order(worker_id: str, order: dict):
    """Process an individual order."""
    # Simulate processing time
    await asyncio.sleep(0.1)
    print(f"[{worker_id}] Processed order {order['id']} for {order['customer']}")

async def start_worker(nc: NATS, worker_id: str):
    """Start a worker that consumes from the consumer group."""
    js = nc.jetstream()

    await setup_stream(js)
    await create_consumer(js)

    # Subscribe to the consumer group
    # Multiple workers with the same queue name share messages
    psub = await js.pull_subscribe(
        "orders.>",
        durable="order-processors",
        stream="ORDERS",
    )

    print(f"[{worker_id}] Worker started, waiting for messages...")

    while True:
        try:
            # Fetch batch of messages
            msgs = await psub.fetch(batch=10, timeout=5)

            for msg in msgs:
                try:
                    order = json.loads(msg.data.decode())
                    print(f"[{worker_id}] Received order {order['id']}")

                    await process_order(worker_id, order)

                    # Acknowledge successful processing
                    await msg.ack()

                except json.JSONDecodeError:
                    print(f"[{worker_id}] Invalid message format")
                    await msg.ack()  # Prevent redelivery of invalid messages

                except Exception as e:
                    print(f"[{worker_id}] Processing error: {e}")
                    await msg.nak()  # Trigger redelivery

        except asyncio.TimeoutError:
            # No messages available, continue polling
            continue
        except Exception as e:
            print(f"[{worker_id}] Fetch error: {e}")
            await asyncio.sleep(1)

async def main():
    nc = NATS()
    await nc.connect("nats://localhost:4222")
    print("Connected to NATS")

    worker_id = os.environ.get("WORKER_ID", "worker-1")

    # Handle graceful shutdown
    loop = asyncio.get_event_loop()

    async def shutdown():
        print(f"[{worker_id}] Shutting down...")
        await nc.drain()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.create_task(shutdown()))

    await start_worker(nc, worker_id)

if __name__ == "__main__":
    asyncio.run(main())
