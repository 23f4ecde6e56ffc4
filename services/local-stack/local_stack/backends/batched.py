"""The execute loop both Python backend stand-ins share (``onnxruntime/``, ``openvino/``).

Triton hands ``execute`` the requests of one dynamic batch: their inputs are concatenated into
one inference call, as the native backends do, and the outputs split back by each request's
rows. A batch that fails answers every one of its requests with the error; the model stays up.

Copied beside each stand-in's ``model.py`` when they are installed (``local_stack.tritonserver``,
the Docker test image), where the Python backend's stub finds it: the folder of the ``model.py``
it loads is on its ``sys.path``.
"""

from collections.abc import Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils


def execute_batched(
    requests: Sequence,
    input_names: Sequence[str],
    output_names: Sequence[str],
    run: Callable[[dict[str, np.ndarray]], Sequence[np.ndarray]],
    who: str,
) -> list:
    """``run(batch)`` → one output array per name, rows in the batch's order."""
    try:
        feeds = {
            name: [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests]
            for name in input_names
        }
        sizes = [a.shape[0] for a in feeds[input_names[0]]]
        results = run({name: np.concatenate(parts) for name, parts in feeds.items()})
    except Exception as exc:  # one bad batch must not take the model down
        error = pb_utils.TritonError(f"{who} shim: {exc}")
        return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
    bounds = np.cumsum([0, *sizes])
    return [
        pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(name, out[bounds[i] : bounds[i + 1]])
                for name, out in zip(output_names, results, strict=True)
            ]
        )
        for i in range(len(requests))
    ]
