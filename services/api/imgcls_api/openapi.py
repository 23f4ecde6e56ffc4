"""OpenAPI 3 description of the API (``/openapi.json``); ``/docs`` renders it with Swagger UI.

The model choice is part of the document: ``?model=`` lists exactly the models this API may
use (``MODELS``), so clients and the explorer offer only those.
"""

from __future__ import annotations

import copy

from flask import Blueprint, current_app, jsonify

from .settings import Settings

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
        "Missing field, empty file, not an image, corrupt image, bad JSON/base64/.npy, "
        "unknown model"
    ),
    "401": _error_response("API keys are on and the request has none or a wrong one"),
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
                        "name": "model",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "which served model answers (GET /models); default "
                        "MODEL_NAME",
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
        "/feedback": {
            "post": {
                "summary": "Say what an answered image really shows (needs CAPTURE_DIR)",
                "description": "Names the answer by its request_id (the X-Request-ID header, also "
                "in the answer) and the image's index in it. When the request's image was not "
                "captured (CAPTURE_RATE), send the same image again; it is accepted only if its "
                "pixels are those the model answered.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Feedback"}},
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["request_id", "label"],
                                "properties": {
                                    "request_id": {"type": "string", "maxLength": 128},
                                    "label": {"type": "string"},
                                    "index": {"type": "integer", "minimum": 0, "default": 0},
                                    "new_class": {"type": "string", "enum": ["true", "false"]},
                                    "image": {"type": "string", "format": "binary"},
                                },
                            }
                        },
                    },
                },
                "responses": {
                    "201": {
                        "description": "stored (replaced: an earlier correction of that image)",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/FeedbackStored"}
                            }
                        },
                    },
                    "400": _error_response("Missing or malformed request_id, label, index, image"),
                    "401": _ERRORS["401"],
                    "404": _error_response(
                        "Feedback is off (no CAPTURE_DIR), or no answered request has that id"
                    ),
                    "413": _ERRORS["413"],
                    "415": _ERRORS["415"],
                    "422": _error_response(
                        "Index not in the answer, a label the answering version does not have, "
                        "image needed (not captured) or not the answered one"
                    ),
                    "429": _error_response(
                        "More than FEEDBACK_PER_MINUTE from this client", retry_after=True
                    ),
                    "507": _error_response("Feedback fills the capture store: harvest it"),
                },
            }
        },
        "/models": {
            "get": {
                "summary": "The models ?model= may choose, with their readiness",
                "responses": {
                    "200": {
                        "description": "the default model and every allowed one",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ModelList"}
                            }
                        },
                    },
                    "401": _ERRORS["401"],
                    "503": _ERRORS["503"],
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
        "securitySchemes": {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        },
        "schemas": {
            "ModelList": {
                "type": "object",
                "required": ["default", "models", "feedback"],
                "properties": {
                    "default": {"type": "string"},
                    "feedback": {"type": "boolean", "description": "POST /feedback is on"},
                    "models": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "ready"],
                            "properties": {
                                "name": {"type": "string"},
                                "ready": {"type": "boolean"},
                                "version": {"type": "string"},
                                "labels": {"type": "array", "items": {"type": "string"}},
                                "candidate": {
                                    "type": "object",
                                    "description": "a version on trial: canary (answers "
                                    "`percent` % of requests) or shadow (sent that share in "
                                    "the background; users get the serving answer)",
                                    "required": ["version", "mode", "percent", "labels"],
                                    "properties": {
                                        "version": {"type": "string"},
                                        "mode": {"enum": ["canary", "shadow"]},
                                        "percent": {"type": "number", "minimum": 0, "maximum": 100},
                                        "labels": {"type": "array", "items": {"type": "string"}},
                                    },
                                },
                            },
                        },
                    },
                },
            },
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
                    "familiar": {
                        "type": "boolean",
                        "description": "false: the input looks unlike the training data (when "
                        "the answering version has a drift reference)",
                    },
                    "drift": {"$ref": "#/components/schemas/Drift"},
                    "known_class": {
                        "type": "boolean",
                        "description": "false: the input looks like none of the classes the "
                        "model knows (when the answering version has an unknown-class score)",
                    },
                    "unknown": {"$ref": "#/components/schemas/Unknown"},
                },
            },
            "Unknown": {
                "type": "object",
                "required": ["score", "threshold", "known_class"],
                "properties": {
                    "score": {"type": "number"},
                    "threshold": {"type": "number"},
                    "known_class": {"type": "boolean"},
                },
            },
            "Drift": {
                "type": "object",
                "required": ["score", "threshold", "familiar"],
                "properties": {
                    "score": {"type": "number", "minimum": 0},
                    "threshold": {"type": "number", "minimum": 0},
                    "familiar": {"type": "boolean"},
                },
            },
            "Feedback": {
                "type": "object",
                "required": ["request_id", "label"],
                "properties": {
                    "request_id": {"type": "string", "maxLength": 128},
                    "label": {"type": "string"},
                    "index": {"type": "integer", "minimum": 0, "default": 0},
                    "new_class": {
                        "type": "boolean",
                        "default": False,
                        "description": "true: the label is a class the answering version does "
                        "not know (any plain class name)",
                    },
                    "image": {"type": "string", "format": "byte", "description": "base64 file"},
                },
            },
            "FeedbackStored": {
                "type": "object",
                "required": ["request_id", "index", "label", "predicted", "replaced"],
                "properties": {
                    "request_id": {"type": "string"},
                    "index": {"type": "integer"},
                    "label": {"type": "string"},
                    "predicted": {"type": "string"},
                    "replaced": {"type": "boolean"},
                    "new_class": {"type": "boolean"},
                },
            },
            "Prediction": {
                "allOf": [
                    {"$ref": "#/components/schemas/Result"},
                    {
                        "type": "object",
                        "required": ["model", "request_id"],
                        "properties": {
                            "model": {"$ref": "#/components/schemas/Model"},
                            "request_id": {"type": "string"},
                        },
                    },
                ]
            },
            "BatchPrediction": {
                "type": "object",
                "required": ["model", "request_id", "results"],
                "properties": {
                    "model": {"$ref": "#/components/schemas/Model"},
                    "request_id": {"type": "string", "description": "for POST /feedback"},
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
        },
    },
}


_PREDICT = SPEC["paths"]["/predict"]["post"]
SPEC["components"]["schemas"]["Explanation"] = {
    "type": "object",
    "required": ["method", "class", "grid", "passes"],
    "properties": {
        "method": {"enum": ["occlusion"]},
        "class": {"type": "string", "description": "the label explained"},
        "grid": {
            "description": "8×8 drops of that class's probability when each part is hidden; "
            "row 0 is the top of the (letterboxed) image",
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}},
        },
        "passes": {"type": "integer", "description": "forward passes it took"},
        "overlay": {"type": "string", "description": "PNG data URL (?overlay=true)"},
    },
}
SPEC["components"]["schemas"]["ExplainedResult"] = {
    "allOf": [
        {"$ref": "#/components/schemas/Result"},
        {
            "type": "object",
            "required": ["explanation"],
            "properties": {"explanation": {"$ref": "#/components/schemas/Explanation"}},
        },
    ]
}
SPEC["paths"]["/explain"] = {
    "post": {
        "summary": "Classify and show what the answer depends on (an occlusion map per image)",
        "description": "The same bodies as /predict (at most 4 images); each image costs 50 "
        "forward passes of the served model.",
        "parameters": [
            next(p for p in _PREDICT["parameters"] if p["name"] == "model"),
            {
                "name": "class",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "the label to explain (default: the top one)",
            },
            {
                "name": "overlay",
                "in": "query",
                "required": False,
                "schema": {"type": "boolean", "default": False},
                "description": "add the map over the image as a PNG data URL",
            },
        ],
        "requestBody": _PREDICT["requestBody"],
        "responses": {
            "200": {
                "description": "the answer and its explanation",
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {
                                    "allOf": [
                                        {"$ref": "#/components/schemas/ExplainedResult"},
                                        {
                                            "type": "object",
                                            "required": ["model", "request_id"],
                                            "properties": {
                                                "model": {"$ref": "#/components/schemas/Model"},
                                                "request_id": {"type": "string"},
                                            },
                                        },
                                    ]
                                },
                                {
                                    "type": "object",
                                    "required": ["model", "request_id", "results"],
                                    "properties": {
                                        "model": {"$ref": "#/components/schemas/Model"},
                                        "request_id": {"type": "string"},
                                        "results": {
                                            "type": "array",
                                            "items": {
                                                "$ref": "#/components/schemas/ExplainedResult"
                                            },
                                        },
                                    },
                                },
                            ]
                        }
                    }
                },
            },
            **_ERRORS,
        },
    }
}

# Optional: no key when API keys are off (the default), either header when they are on.
_KEYED = [{}, {"ApiKey": []}, {"Bearer": []}]


def document(settings: Settings) -> dict:
    """SPEC with this API's allowed models as the ``model`` enum, and keys where they apply."""
    spec = copy.deepcopy(SPEC)
    predict = spec["paths"]["/predict"]["post"]
    for route in ("/predict", "/explain"):
        for param in spec["paths"][route]["post"]["parameters"]:
            if param["name"] == "model":
                param["schema"]["enum"] = list(settings.allowed_models)
    spec["paths"]["/explain"]["post"]["security"] = _KEYED
    predict["security"] = _KEYED
    spec["paths"]["/models"]["get"]["security"] = _KEYED
    spec["paths"]["/feedback"]["post"]["security"] = _KEYED
    return spec


@bp.get("/openapi.json")
def openapi_json():
    return jsonify(document(current_app.config["SETTINGS"]))
