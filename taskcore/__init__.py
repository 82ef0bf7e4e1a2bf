"""taskcore: the shared library of the task system (a Lambda layer, also imported by the workers).

Flat modules, one job each (docs/taskcore.md records their contracts):
    settings      Settings.from_env(): every knob, defaults as in infra/local.env
    keys          every Redis key and RabbitMQ name, namespaced
    registry      TASK_TYPES: the task types, their payload schemas and computations
    work          the deterministic computations (primes, hash, sleep, fail)
    messages      TaskSpec / Task / TaskResult, fingerprint(), validation of every request input
    states        the system's words as str enums: TaskStatus, Admitted, CacheOutcome, RunVerdict, Completion
    json_body     a request body read as JSON under the API's limits; refused values quoted in errors
    errors        the HTTP error shape, the status of each error code, the exceptions that map to them
    scripts       the Lua scripts (admission, undo, completion, running, reaping, reassigning, reads)
    store         TaskStore: Redis records, cache, coalescing, liveness, long-poll, stats
    backoff       Backoff: the one retry/backoff policy (Redis retries, reconnects, task retry delays)
    rabbitmq      everything RabbitMQ: the Broker interface, the topology, AmqpBroker (py-amqp,
                  `amqp`), AmqpConsumer (pika, loaded by AmqpBroker.open_consumer only: no function
                  consumes) and MemoryBroker (in memory, for unit tests)
    dispatch      submit(), janitor(), reports: the supervisor without HTTP
    results       store_batch(): the result handler without Lambda (retries, poison messages)
    producer      generate_tasks() and SupervisorClient: the producer without HTTP
    httpclient    Client: a lean keep-alive HTTP/1.1 client (the producer's calls to the supervisor)
    signing       Signer: SigV4 for calls to AWS_IAM function URLs (botocore's signature, our code)
    http          json_response(), api_errors: what the Chalice views share
    function_url  function_url_handler(app): Lambda function URLs in front of Chalice

Third-party packages are imported at the top of the modules that use them: amqp by rabbitmq.amqp;
pika by rabbitmq.pika_consumer; redis by store, dispatch and results; chalice by http. settings,
keys, registry, work, messages, states, json_body, errors, scripts, backoff, rabbitmq, function_url,
httpclient, signing and producer need only the standard library (and each other), so importing
taskcore.messages, for one, pulls in no broker or Redis client, nor does the broker interface
(taskcore.rabbitmq). http maps Redis's errors to 503 without importing redis (it looks the module
up), so the producer, which has no store, never loads it.
"""
