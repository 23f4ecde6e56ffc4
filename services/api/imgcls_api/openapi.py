"""OpenAPI 3 description of the API (``/openapi.json``) and a self-contained page (``/docs``).

The page is rendered here from the same document (no CDN: these hosts may be offline).
"""

from __future__ import annotations

import html
import json

from flask import Blueprint, Response, jsonify

bp = Blueprint("openapi", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_response(description: str, retry_after: bool = False) -> dict:
    response: dict = {
        "description": description,
        "content": {"application/json": {"schema": _ERROR}},
    }
    if retry_after:
        response["headers"] = {
            "Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}
        }
    return response


_ERRORS = {
    "400": _error_response(
        "Missing field, empty file, not an image, corrupt image, bad JSON/base64/.npy"
    ),
    "413": _error_response("Body over MAX_UPLOAD_MB, image over MAX_IMAGE_PIXELS, too many images"),
    "415": _error_response("Unsupported Content-Type"),
    "422": _error_response(
        "Pixel array of wrong rank/channels, NaN/inf, outside 0–255, non-numeric"
    ),
    "429": _error_response("More predictions in progress than MAX_IN_FLIGHT", retry_after=True),
    "503": _error_response("Triton unreachable or the model not ready", retry_after=True),
    "504": _error_response("Triton did not answer in time"),
}

SPEC: dict = {
    "openapi": "3.0.3",
    "info": {
        "title": "imgcls API",
        "version": "1.0.0",
        "description": "Image classification in front of NVIDIA Triton. Labels, input size and "
        "model version come from the served model.",
    },
    "paths": {
        "/predict": {
            "post": {
                "summary": "Classify one or several images",
                "parameters": [
                    {
                        "name": "top_k",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1},
                        "description": "limit the returned distribution to the k most likely classes",
                    },
                    {
                        "name": "shape",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[0-9]+,[0-9]+,[13]$"},
                        "description": "H,W,C of DataFrame rows (JSON DataFrame bodies only)",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {
                                        "description": "one or more image files (any Pillow format)",
                                        "type": "string",
                                        "format": "binary",
                                    }
                                },
                            }
                        },
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/Instances"},
                                    {"$ref": "#/components/schemas/DataFrameSplit"},
                                    {"$ref": "#/components/schemas/DataFrameRecords"},
                                ]
                            }
                        },
                        "application/x-npy": {
                            "schema": {
                                "type": "string",
                                "format": "binary",
                                "description": "numpy .npy of H×W×3 or N×H×W×3, values 0–255",
                            }
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The classification(s)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Prediction"},
                                        {"$ref": "#/components/schemas/BatchPrediction"},
                                    ]
                                }
                            }
                        },
                    },
                    **_ERRORS,
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The API process is alive",
                "responses": {
                    "200": {
                        "description": "alive",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Triton reachable and the model ready",
                "responses": {
                    "200": {
                        "description": "ready",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "503": {
                        "description": "not ready",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Model": {
                "type": "object",
                "required": ["name", "version"],
                "properties": {"name": {"type": "string"}, "version": {"type": "string"}},
            },
            "Ranked": {
                "type": "object",
                "required": ["label", "probability"],
                "properties": {
                    "label": {"type": "string"},
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                },
            },
            "Result": {
                "type": "object",
                "required": ["label", "probability", "predictions"],
                "properties": {
                    "label": {"type": "string"},
                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                    "predictions": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Ranked"},
                    },
                },
            },
            "Prediction": {
                "allOf": [
                    {"$ref": "#/components/schemas/Result"},
                    {
                        "type": "object",
                        "required": ["model"],
                        "properties": {"model": {"$ref": "#/components/schemas/Model"}},
                    },
                ]
            },
            "BatchPrediction": {
                "type": "object",
                "required": ["model", "results"],
                "properties": {
                    "model": {"$ref": "#/components/schemas/Model"},
                    "results": {"type": "array", "items": {"$ref": "#/components/schemas/Result"}},
                },
            },
            "Instances": {
                "type": "object",
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "array",
                        "items": {
                            "description": "base64 image file, {'b64': ...}, or H×W×3 nested list",
                        },
                    }
                },
            },
            "DataFrameSplit": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "columns": {"type": "array"},
                    "index": {"type": "array"},
                    "data": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "number"}},
                    },
                },
            },
            "DataFrameRecords": {"type": "array", "items": {"type": "object"}},
        }
    },
}


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(SPEC)


@bp.get("/docs")
def docs():
    """A human page: every route, body type and response, from the same document."""
    rows = []
    for path, methods in SPEC["paths"].items():
        for method, op in methods.items():
            bodies = ", ".join(op.get("requestBody", {}).get("content", {})) or "—"
            statuses = ", ".join(
                f"{code} {r['description']}" for code, r in op["responses"].items()
            )
            rows.append(
                f"<tr><td><code>{method.upper()} {path}</code></td><td>{html.escape(op['summary'])}"
                f"</td><td>{html.escape(bodies)}</td><td>{html.escape(statuses)}</td></tr>"
            )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>imgcls API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:.4em;"
        "vertical-align:top}table{border-collapse:collapse}</style></head><body>"
        f"<h1>{SPEC['info']['title']}</h1><p>{html.escape(SPEC['info']['description'])}</p>"
        "<table><tr><th>route</th><th>what</th><th>bodies</th><th>responses</th></tr>"
        + "".join(rows)
        + "</table><h2>OpenAPI document</h2><pre>"
        + html.escape(json.dumps(SPEC, indent=2))
        + "</pre></body></html>"
    )
    return Response(page, mimetype="text/html")
