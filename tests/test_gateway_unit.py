"""The serving core's seam: the real gateway and the one that answers from memory offer the API
the same calls (``imgcls.gateway.protocol.Gateway``), with the same parameters."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from imgcls.gateway.client import TritonGateway
from imgcls.gateway.errors import ApiError
from imgcls.gateway.memory import MemoryGateway
from imgcls.gateway.protocol import Gateway
from imgcls.gateway.settings import GatewaySettings

CALLS = [n for n, v in vars(Gateway).items() if inspect.isfunction(v) and not n.startswith("_")]


def _parameters(fn) -> list[tuple[str, object]]:
    """Names and defaults, in order (what a caller relies on)."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # without self
    return [(p.name, p.default) for p in params]


@pytest.mark.parametrize("gateway", [TritonGateway, MemoryGateway])
@pytest.mark.parametrize("call", CALLS)
def test_both_gateways_offer_every_call_of_the_protocol(gateway, call):
    assert set(CALLS) == {"model_ready", "model_info", "route", "infer"}
    wanted = _parameters(getattr(Gateway, call))
    offered = _parameters(getattr(gateway, call))
    assert offered[: len(wanted)] == wanted, (gateway.__name__, call, offered)
    assert all(default is not inspect.Parameter.empty for _, default in offered[len(wanted) :])


def test_the_check_sees_a_call_that_differs():
    class Wrong:
        def infer(self, images, model):  # no compare
            raise NotImplementedError

    assert _parameters(Wrong.infer) != _parameters(Gateway.infer)


def test_the_memory_gateway_answers_by_colour_and_fails_as_told():
    gateway = MemoryGateway(labels=("red", "green", "blue"), size=(4, 4))
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    outputs, info = gateway.infer(red, "resnet50v2")
    assert info.labels[int(outputs.probabilities.argmax())] == "red" and info.version == "1"
    grey = np.full((1, 4, 4, 3), 128, np.uint8)
    (unknown_red, unknown_grey) = (
        gateway.infer(x, "resnet50v2")[0].unknown[0] for x in (red, grey)
    )
    assert unknown_red < info.unknown_threshold < unknown_grey  # grey: of no class it knows
    assert gateway.route("resnet50v2").serving == info
    with pytest.raises(ApiError) as missing:
        gateway.model_info("another")
    assert missing.value.status == 503
    gateway.error = ApiError(504, "triton_timeout", "slow")
    with pytest.raises(ApiError, match="slow"):
        gateway.model_ready("resnet50v2")


def test_the_real_gateway_needs_only_its_own_settings():
    gateway = TritonGateway(GatewaySettings(triton_url="127.0.0.1:9", connect_timeout_s=0.2))
    with pytest.raises(ApiError) as unreachable:
        gateway.model_ready("resnet50v2")
    assert unreachable.value.status == 503 and unreachable.value.code == "triton_unavailable"
