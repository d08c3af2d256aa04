"""The GitHub bot: webhook server, commands, job queue, comments.

`ekka serve` runs `app.serve` (the server with a worker), `ekka worker` runs `worker.run_worker`.
The modules: `config` (TOML + environment), `signatures`, `commands` (the grammar), `handlers`
(one per webhook event), `app` (Starlette), `db` (the tables), `worker` (commands and the job
loop), `jobs` (one job), `messages` (the comments' templates). GitHub itself (the client,
comments found by their marker) is `ekka.forge`, shared with the sweeps and the bisection.
Nothing is imported here, so that loading one module loads none of the others.
"""
