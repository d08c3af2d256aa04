"""The GitHub bot: webhook server, commands, job queue, comments.

`ekka serve` runs `app.serve` (the server with a worker), `ekka worker` runs `worker.run_worker`.
The modules: `config` (TOML + environment), `signatures`, `commands` (the grammar), `handlers`
(one per webhook event), `app` (Starlette), `db` (the tables), `worker` (commands and the job
loop), `jobs` (one job), `messages` (the comments' templates), `comments` (find by marker,
edit or post), `github` (the project's one GitHub client). Nothing is imported here, so that
`ekka.bot.github` loads without the server's dependencies.
"""
