"""`medsam serve`: the annotation server (HTTP API + browser page) on http://127.0.0.1:8000/.

    medsam serve --data-root /data/ct --sessions-dir ~/annotations [--token SECRET] [--port 8000]
    medsam serve --dicomweb http://pacs:8042/dicom-web     # browse the PACS, export labels back to it

Open the printed address in a browser (with a token: http://127.0.0.1:8000/#token=SECRET). The API is
described at /docs and /openapi.json; ``medsam.client.MedsamClient`` drives it from Python.
"""

from __future__ import annotations

import argparse

from medsam.cli.common import add_model_options


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="run the annotation server: HTTP API and browser page for prompting, accepting and exporting masks",
        description="Run the annotation server. It binds to 127.0.0.1 unless --host says otherwise; sessions "
        "(accepted labels, exports) are kept in --sessions-dir and reopened when the server restarts.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--data-root", default=None, help="folder whose images/volumes may be opened by path (nothing outside it)")
    parser.add_argument("--token", default=None, help="require this token on every API request (Authorization: Bearer TOKEN)")
    parser.add_argument("--sessions-dir", default=None, help="where sessions are saved (default ~/.local/share/medsam/sessions)")
    parser.add_argument("--max-upload-mb", type=float, default=512.0, help="largest upload in MiB (default 512)")
    parser.add_argument("--cache-mb", type=float, default=512.0, help="embedding cache size in MiB (default 512)")
    parser.add_argument("--prefetch", type=int, default=2, help="neighbour slices encoded ahead on each side (0 = off; default 2)")
    parser.add_argument("--prefetch-idle", type=float, default=1.5, help="seconds without requests before encoding ahead (default 1.5)")
    parser.add_argument("--decode-threads", type=int, default=1, help="torch threads for prompts (default 1: robust on shared cores)")
    parser.add_argument("--encode-threads", type=int, default=None, help="torch threads for encoding and propagation (default: all cores)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--refinement", default=None, choices=["box_update", "sam"],
                        help="how clicks refine a mask: box_update (the model gets only a box; the clicks edit it and its "
                        "logits) or sam (box + clicks as points + previous logits); default: the model's own "
                        "(box_update for lite_medsam/medsam_vit_b, sam for SAM)")
    parser.add_argument("--dicomweb", default=None, metavar="URL",
                        help="a PACS's DICOMweb root (e.g. http://pacs:8042/dicom-web): browse and open its series, export "
                        "labels back to it; credentials from MEDSAM_DICOMWEB_USERNAME/PASSWORD, _TOKEN or _CREDENTIALS=file")
    add_model_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from medsam.errors import InputError
    from medsam.serve.settings import ServeSettings, is_loopback

    try:
        import uvicorn

        from medsam.serve.app import create_app
    except ImportError as exc:
        raise InputError(f"`medsam serve` needs the serve extra ({exc.name} is missing): pip install 'medsam-toolkit[serve]'") from exc
    kwargs = {}
    if args.sessions_dir:
        kwargs["sessions_dir"] = args.sessions_dir
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        data_root=args.data_root,
        token=args.token,
        model=args.model,
        checkpoint=args.checkpoint,
        device=args.device,
        max_upload_mb=args.max_upload_mb,
        cache_mb=args.cache_mb,
        prefetch_slices=args.prefetch,
        prefetch_idle_s=args.prefetch_idle,
        decode_threads=args.decode_threads,
        encode_threads=args.encode_threads,
        precision=getattr(args, "precision", "auto"),
        backend=getattr(args, "backend", "auto"),
        threads=getattr(args, "threads", None),
        refinement=args.refinement,
        dicomweb_url=args.dicomweb,
        **kwargs,
    )
    if not is_loopback(settings.host) and settings.token is None:
        print(
            f"medsam serve: warning: listening on {settings.host} without --token; anyone who can reach this "
            "machine can read and change your sessions",
            file=sys.stderr,
        )
    app = create_app(settings)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    fragment = "#token=<your token>" if settings.token else ""
    print(f"medsam serve: model {settings.model}, sessions in {settings.sessions_dir}", flush=True)
    if settings.dicomweb_url:
        print(f"medsam serve: PACS {settings.dicomweb_url} (DICOMweb)", flush=True)
    print(f"medsam serve: open http://{shown}:{settings.port}/{fragment}  (API docs: /docs)", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        access_log=args.log_level == "debug",
        timeout_graceful_shutdown=5,  # a long request (proposals) must not hold Ctrl+C; saved work is already on disk
    )
    return 0
