"""Peer systems for the benchmarks (issue 4): Celery 5 and Dramatiq 2 behind the same HTTP contract
as our producer/supervisor, so that one load generator drives all three.

    POST /produce   one task or {"tasks": [...]}  -> 202 {"task_id", "status": "queued", "result_url"}
    GET  /results/{id}?wait=S                     -> 200 {"task_id", "status", "result"|"error"}, 404

`bench.peers.run.start_peer(name)` starts a peer (workers + gunicorn front); see README.md here.
"""
