"""UI-format workflow → API-format prompt, and the test rewrites applied before running one.

Pure Python (no ComfyUI, no torch): the host driver uses it with the host's node input
definitions (``INPUT_TYPES()`` of each class), the unit tests use the structural checks.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# frontend-only node types that never reach the backend
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def load(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def check_structure(wf: dict) -> list[str]:
    """Problems with a UI workflow's structure (empty list = fine): ids, links and slots agree."""
    problems: list[str] = []
    for key in ("nodes", "links", "last_node_id", "last_link_id"):
        if key not in wf:
            problems.append(f"missing {key!r}")
    if problems:
        return problems
    nodes = {n["id"]: n for n in wf["nodes"]}
    if len(nodes) != len(wf["nodes"]):
        problems.append("duplicate node ids")
    links = {lk[0]: lk for lk in wf["links"]}
    if wf["nodes"] and max(nodes) > wf["last_node_id"]:
        problems.append("last_node_id is smaller than a node id")
    if wf["links"] and max(links) > wf["last_link_id"]:
        problems.append("last_link_id is smaller than a link id")
    for n in wf["nodes"]:
        for k in ("type", "pos", "size", "inputs", "outputs", "widgets_values"):
            if k not in n:
                problems.append(f"node {n.get('id')} has no {k!r}")
        for slot, inp in enumerate(n.get("inputs", [])):
            lid = inp.get("link")
            if lid is None:
                continue
            lk = links.get(lid)
            if lk is None:
                problems.append(f"node {n['id']} input {inp['name']!r} uses missing link {lid}")
            elif lk[3] != n["id"] or lk[4] != slot:
                problems.append(f"link {lid} does not end at node {n['id']} slot {slot}")
        for slot, out in enumerate(n.get("outputs", [])):
            for lid in out.get("links") or []:
                lk = links.get(lid)
                if lk is None or lk[1] != n["id"] or lk[2] != slot:
                    problems.append(
                        f"node {n['id']} output {out['name']!r} lists link {lid} that does not start there"
                    )
    for lk in wf["links"]:
        lid, src, sslot, dst, dslot, typ = lk
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid} joins unknown nodes {src}->{dst}")
            continue
        outs = nodes[src]["outputs"]
        ins = nodes[dst]["inputs"]
        if sslot >= len(outs) or dslot >= len(ins):
            problems.append(f"link {lid} uses a missing slot")
            continue
        if ins[dslot].get("link") != lid or lid not in (outs[sslot].get("links") or []):
            problems.append(f"link {lid} is not recorded on both ends")
        if typ != outs[sslot]["type"]:
            problems.append(f"link {lid} type {typ} != output type {outs[sslot]['type']}")
    return problems


def _input_kind(spec: Any) -> str:
    """'widget' or 'socket' for an INPUT_TYPES entry ``(type, options)``."""
    typ = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(typ, list):
        return "widget"
    if typ in WIDGET_TYPES and not opts.get("forceInput") and not opts.get("rawLink"):
        return "widget"
    return "socket"


def _has_control_widget(name: str, spec: Any) -> bool:
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def ui_to_api(wf: dict, node_defs: dict[str, dict]) -> dict[str, dict]:
    """Convert a UI workflow to an API prompt using ``node_defs[class] = INPUT_TYPES()``."""
    links = {lk[0]: lk for lk in wf["links"]}
    prompt: dict[str, dict] = {}
    for n in sorted(wf["nodes"], key=lambda n: n["id"]):
        ctype = n["type"]
        if ctype in FRONTEND_ONLY or n.get("mode", 0) in (2, 4):  # muted / bypassed
            continue
        if ctype not in node_defs:
            raise KeyError(f"node {n['id']}: unknown node type {ctype!r}")
        defs = node_defs[ctype]
        ordered = list((defs.get("required") or {}).items()) + list((defs.get("optional") or {}).items())
        linked = {inp["name"]: inp.get("link") for inp in n.get("inputs", [])}
        widgets = list(n.get("widgets_values") or [])
        if isinstance(n.get("widgets_values"), dict):
            raise ValueError(f"node {n['id']}: dict widgets_values are not supported")
        inputs: dict[str, Any] = {}
        wi = 0
        for name, spec in ordered:
            kind = _input_kind(spec)
            if linked.get(name) is not None:
                lk = links[linked[name]]
                inputs[name] = [str(lk[1]), lk[2]]
                if kind == "widget":  # a widget converted to an input still owns its widget value
                    wi += 1 + (1 if _has_control_widget(name, spec) else 0)
                continue
            if kind == "widget":
                if wi >= len(widgets):
                    raise ValueError(f"node {n['id']} ({ctype}): no widget value for {name!r}")
                inputs[name] = widgets[wi]
                wi += 1 + (1 if _has_control_widget(name, spec) else 0)
        prompt[str(n["id"])] = {
            "class_type": ctype,
            "inputs": inputs,
            "_meta": {"title": n.get("title", ctype)},
        }
    return prompt


# ----------------------------------------------------------------------------- test rewrites

TEXT_ENCODER_LOADERS = {"DualCLIPLoader", "CLIPLoader", "TripleCLIPLoader"}
TEXT_ENCODERS = {"CLIPTextEncode", "CLIPTextEncodeFlux"}


def text_seed(text: str) -> int:
    """The seed ``TFTestConditioning`` derives from a prompt text (keep in sync with the test pack)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little") & 0x7FFFFFFF


def make_test_prompt(
    api: dict[str, dict],
    set_inputs: dict[str, dict[str, Any]],
    tokens: int = 8,
    keep_decode: bool = False,
) -> dict[str, dict]:
    """Swap what tests cannot run: text encoders → ``TFTestConditioning`` (a linked ``text`` input
    stays linked, so the conditioning follows the prompt; typed texts keep the per-node seed), VAE
    decode + SaveImage → ``SaveLatent`` (unless ``keep_decode``: then the VAE loader stays, e.g.
    set to a tiny ``taef2``); then set inputs per class (``{"KSampler": {"steps": 2}}``)."""
    p = copy.deepcopy(api)
    for nid, node in list(p.items()):
        ct = node["class_type"]
        if ct in TEXT_ENCODERS:
            batch = node["inputs"].get("batch", 1)
            inputs = {"seed": int(nid), "tokens": tokens, "batch": batch}
            text = node["inputs"].get("text")
            if isinstance(text, list):  # linked, e.g. from TernaryFluxCalibrationPrompt
                inputs["text"] = text
            p[nid] = {"class_type": "TFTestConditioning", "inputs": inputs}
    for nid, node in list(p.items()):
        if node["class_type"] == "SaveImage" and not keep_decode:
            src = node["inputs"]["images"]
            dec = p[src[0]]
            if dec["class_type"] != "VAEDecode":
                raise ValueError(f"SaveImage {nid} is not fed by VAEDecode")
            p[nid] = {
                "class_type": "SaveLatent",
                "inputs": {"samples": dec["inputs"]["samples"], "filename_prefix": f"latent_{nid}"},
            }
    removable = TEXT_ENCODER_LOADERS | {"VAELoader", "VAEDecode"}
    while True:
        used = {
            v[0]
            for node in p.values()
            for v in node["inputs"].values()
            if isinstance(v, list) and len(v) == 2
        }
        drop = [nid for nid, node in p.items() if node["class_type"] in removable and nid not in used]
        if not drop:
            break
        for nid in drop:
            del p[nid]
    for node in p.values():
        for name, value in set_inputs.get(node["class_type"], {}).items():
            node["inputs"][name] = value
    dangling = [
        (nid, name)
        for nid, node in p.items()
        for name, v in node["inputs"].items()
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in p
    ]
    if dangling:
        raise ValueError(f"rewritten prompt has inputs linked to removed nodes: {dangling}")
    return p
