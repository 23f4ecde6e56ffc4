"""The serving contract: the facts the pipeline, the API, the lifecycle commands, the bench and
the deployment files must agree on, in one place. Everything else imports them from here, and
``tests/test_contract.py`` holds docker-compose.yml, the Helm values, .env.example and the README
to them.
"""

from __future__ import annotations

from pathlib import Path

from imgcls.variants import served_names

#: The model's one input: uint8 pixels ``N×H×W×3``, letterboxed by ``imgcls.preprocessing``.
INPUT_NAME = "image"
#: The model's output: softmax probabilities ``N×classes``.
OUTPUT_NAME = "probabilities"
#: Its second output where the pipeline added one: how unlike the training data each input is
#: (``N×1``; ``model_preparation/reference.py``).
DRIFT_NAME = "drift"
#: Its third output where the pipeline added one: how unlike any class the model knows each input
#: is (``N×1``; ``model_preparation/ood.py``).
UNKNOWN_NAME = "unknown"
#: The model the API answers with when a request names none (``MODEL_NAME``).
DEFAULT_MODEL = "resnet50v2"
#: Images larger than this many pixels are refused before they are decoded (decompression bombs).
MAX_IMAGE_PIXELS = 40_000_000
#: Triton's model repository in a checkout (the publish stage writes it; ``model.dvc`` tracks it).
MODEL_REPOSITORY = Path("model_repository")
#: Where the local launcher (``make up``) leaves Triton's admin key for the lifecycle commands.
LOCAL_ADMIN_KEY_FILE = Path(".cache/triton-admin-key")
#: Triton's control endpoints that need the ``admin-key`` header (never open to the network).
RESTRICTED_APIS = "logging,trace,model-repository"

#: What the API may answer with by default (``MODELS``): every variant of the default model
#: (``imgcls.variants``: FP32, INT8, BF16).
DEFAULT_MODELS = served_names(DEFAULT_MODEL)
