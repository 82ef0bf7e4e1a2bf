"""taskcore: the shared library of the task system (a Lambda layer, also imported by the workers).

Flat modules, one job each:
    settings      Settings.from_env(): every knob, defaults as in infra/local.env
    keys          every Redis key and RabbitMQ name, namespaced
    registry      TASK_TYPES: the task types, their payload schemas and computations
    work          the deterministic computations (primes, hash, sleep, fail)
    messages      TaskSpec / Task / TaskResult, fingerprint(), validate_submission()
    errors        the HTTP error shape, Unavailable
    scripts       the Lua scripts (admission, undo, completion, running, reaping)
    store         TaskStore: Redis records, cache, coalescing, liveness, long-poll
    broker        topology declaration and the confirming Publisher
    dispatch      submit(), janitor(), reports: the supervisor without HTTP
    function_url  function_url_handler(app): Lambda function URLs in front of Chalice

Modules import their dependencies (redis, pika) only where needed, so importing
taskcore.messages does not pull in a broker client.
"""
