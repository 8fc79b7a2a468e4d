"""Runs inside the ComfyUI host's Python (COMFYUI_PYTHON): starts ComfyUI headless in-process
(§15 of the research notes: the same PromptExecutor the server's worker uses), loads the custom
nodes found in ``<base>/custom_nodes`` (this pack + the test pack, as symlinks), then runs jobs.

    python host_driver.py --comfy $COMFYUI_PATH --base BASE --jobs jobs.json --out results.json

A job is ``{"name", "prompt"}`` (API format) or ``{"name", "workflow", "set"}`` (a UI workflow
converted with the host's node definitions, then rewritten by ``workflow_tools.make_test_prompt``),
or ``{"name", "node_list": true}``. Each result records validation, success, error messages and
the history outputs. Jobs run one after another in one executor, as a server would run them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))


class _StubServer:
    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append(event)

    def queue_updated(self):
        pass


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfy", required=True)
    ap.add_argument("--base", required=True)
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    a.comfy, a.base, a.jobs, a.out = (os.path.abspath(p) for p in (a.comfy, a.base, a.jobs, a.out))

    sys.path.insert(0, a.comfy)
    sys.path.insert(0, HERE)
    os.chdir(a.comfy)
    sys.argv = [
        "main.py",
        "--cpu",
        "--base-directory",
        a.base,
        "--disable-api-nodes",
        "--database-url",
        "sqlite:///:memory:",
        "--cache-classic",
    ]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    import comfyui_version
    import execution
    import folder_paths  # noqa: F401
    import workflow_tools

    import nodes

    t0 = time.time()
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    init_s = time.time() - t0
    failed = [m for m in getattr(nodes, "LOADED_MODULE_DIRS", {})]  # noqa: F841
    server = _StubServer()
    executor = execution.PromptExecutor(
        server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0, "ram_inactive": 0}
    )
    node_defs = {name: cls.INPUT_TYPES() for name, cls in nodes.NODE_CLASS_MAPPINGS.items()}

    results: dict[str, dict] = {"_host": {"version": comfyui_version.__version__, "init_s": init_s}}
    jobs = json.load(open(a.jobs))
    for job in jobs:
        name = job["name"]
        r: dict = {"name": name}
        results[name] = r
        t1 = time.time()
        try:
            if job.get("node_list"):
                r["nodes"] = sorted(nodes.NODE_CLASS_MAPPINGS)
                r["display"] = {k: nodes.NODE_DISPLAY_NAME_MAPPINGS.get(k) for k in nodes.NODE_CLASS_MAPPINGS}
                r["pack_schemas"] = {
                    k: nodes.NODE_CLASS_MAPPINGS[k].INPUT_TYPES()
                    for k in nodes.NODE_CLASS_MAPPINGS
                    if k.startswith("TernaryFlux")
                }
                r["categories"] = {
                    k: getattr(nodes.NODE_CLASS_MAPPINGS[k], "CATEGORY", None)
                    for k in nodes.NODE_CLASS_MAPPINGS
                    if k.startswith("TernaryFlux")
                }
                r["success"] = True
                continue
            if job.get("call"):  # a fixture the host writes with its own classes (host_fixtures.py)
                import importlib

                mod, fn = job["call"].split(":")
                r["result"] = getattr(importlib.import_module(mod), fn)(**job.get("kwargs", {}))
                r["success"] = True
                continue
            if job.get("dump_defs"):
                r["defs"] = {
                    k: {
                        "input": node_defs[k],
                        "output": list(getattr(nodes.NODE_CLASS_MAPPINGS[k], "RETURN_TYPES", ())),
                        "output_name": list(
                            getattr(nodes.NODE_CLASS_MAPPINGS[k], "RETURN_NAMES", None) or []
                        ),
                    }
                    for k in job["dump_defs"]
                }
                r["success"] = True
                continue
            if "workflow" in job:
                wf = workflow_tools.load(job["workflow"])
                api = workflow_tools.ui_to_api(wf, node_defs)
                r["api_original"] = api
                if job.get("validate_only"):
                    prompt = api
                else:
                    prompt = workflow_tools.make_test_prompt(
                        api, job.get("set", {}), keep_decode=bool(job.get("keep_decode"))
                    )
            else:
                prompt = job["prompt"]
            r["prompt"] = prompt
            pid = str(uuid.uuid4())
            valid = asyncio.run(execution.validate_prompt(pid, prompt, None))
            r["valid"] = bool(valid[0])
            if not valid[0]:
                r["validation_error"] = valid[1]
                r["node_errors"] = valid[3]
                r["success"] = False
                continue
            if job.get("validate_only"):
                r["success"] = True
                continue
            executor.execute(prompt, pid, {}, valid[2])
            r["success"] = bool(executor.success)
            r["outputs"] = executor.history_result.get("outputs", {}) if executor.success else {}
            r["errors"] = [
                {k: d.get(k) for k in ("node_id", "node_type", "exception_message", "exception_type")}
                for ev, d in executor.status_messages
                if ev == "execution_error"
            ]
        except Exception as e:  # a driver bug: report, keep going
            r["success"] = False
            r["driver_error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
        finally:
            r["seconds"] = round(time.time() - t1, 2)
    with open(a.out, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
