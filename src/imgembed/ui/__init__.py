"""The browser page (``/ui``): open an image, click or drag, see the mask; decoded in the browser.

The server computes the image's SAM 2 features once (``POST /v1/sam2/embed`` with the ``binary``
encoding); the page runs the SAM 2 decoder itself with onnxruntime-web, served by imgembed from
``vendor/`` (filled from the npm registry by ``scripts/fetch_ui_assets.sh``), so each click updates
the mask without another request. The decoder graph is exported from the served model on first
use (:mod:`imgembed.export.decoder_cache`). See ``docs/ui.md``.

Nothing is imported here; the router is :data:`imgembed.ui.routes.router`.
"""
