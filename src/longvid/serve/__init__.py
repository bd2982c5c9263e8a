"""`longvid serve`: an OpenAI-compatible HTTP server for video chat.

* `schemas`  -- the API's request / response models, and messages -> (system, history, question, media)
* `media`    -- `file://`, `data:` and `http(s)://` media, resolved under the server's security rules
* `engine`   -- one chat request on the model thread: feature cache, token budget, stop strings, deltas
* `worker`   -- the single model thread, the bounded admission queue, cancellation and deadlines
* `app`      -- the FastAPI application: routes, streaming, errors in OpenAI's JSON shape
* `commands` -- the `longvid serve` command
* `process`  -- `longvid serve` in a child process on a free port (tests, benchmarks, notebooks)

Only `commands` is imported at CLI start-up; it imports the rest (FastAPI, uvicorn) when the command runs.
"""
