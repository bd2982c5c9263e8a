"""`longvid web`: a page for asking about a video in a browser.

* `app`      -- the FastAPI application: per-tab sessions over one shared model and feature cache
* `page.html`-- the whole page (HTML + CSS + JS in one file, nothing fetched from elsewhere)
* `commands` -- the `longvid web` command

Only `commands` is imported at CLI start-up; it imports FastAPI and uvicorn when the command runs.
"""
