"""The HookPoint / HookedRootModule API as TransformerLens 3.9 documents and names it."""

from __future__ import annotations

import torch

from telelens.core.hook_points import HookedRootModule, HookPoint, LensHandle
from telelens.core.hooked_transformer import HookedTransformer


class Toy(HookedRootModule):
    """TL's docs' toy: a linear layer with hook points around it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.hook_in = HookPoint()
        self.hook_out = HookPoint()
        self.setup()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.lin(self.hook_in(x)))


def test_prepend_keeps_firing_order_in_fwd_hooks():
    model, fired = Toy(), []

    def tag(label):
        def hook(x, hook):
            fired.append(label)

        return hook

    model.hook_out.add_hook(tag("a"))
    model.hook_out.add_hook(tag("b"), prepend=True)
    model.add_hook("hook_out", tag("c"), prepend=True)
    model(torch.ones(1, 3))
    assert fired == ["c", "b", "a"]
    labels = [h.user_hook for h in model.hook_out.fwd_hooks]
    fired.clear()
    for fn in labels:
        fn(None, hook=None)
    assert fired == ["c", "b", "a"]  # the list order is the firing order


def test_lens_handle_fields_has_hooks_and_list_hooks():
    model = Toy()
    model.add_perma_hook("hook_in", lambda x, hook: None)
    with model.hooks(fwd_hooks=[("hook_out", lambda x, hook: x * 2)]):
        handle = model.hook_out.fwd_hooks[0]
        assert isinstance(handle, LensHandle)
        assert (handle.is_permanent, handle.context_level) == (False, 1)
        assert model.hook_out.has_hooks() and model.hook_out.has_hooks("fwd", level=1)
        assert not model.hook_out.has_hooks("bwd")
        assert set(model.list_hooks()) == {"hook_in", "hook_out"}
        assert set(model.list_hooks(including_permanent=False)) == {"hook_out"}
        assert list(model.list_hooks("hook_in")) == ["hook_in"]
    assert not model.hook_out.has_hooks()
    assert model.hook_in.has_hooks() and not model.hook_in.has_hooks(including_permanent=False)
    assert model.hook_in.fwd_hooks[0].is_permanent
    model.reset_hooks(including_permanent=True)
    assert model.list_hooks() == {}


def test_repr_names_the_hook_point():
    model = Toy()
    assert repr(HookPoint()) == "HookPoint()"
    assert repr(model.hook_in) == "HookPoint(name='hook_in')"
    model.add_hook("hook_in", lambda x, hook: None)
    model.add_hook("hook_in", lambda x, hook: None, dir="bwd")
    assert repr(model.hook_in) == "HookPoint(name='hook_in', 1 fwd, 1 bwd)"


def test_root_module_methods():
    model = Toy()
    assert [hp.name for hp in model.hook_points()] == ["hook_in", "hook_out"]
    cache: dict = {}
    model.cache_all(cache)
    assert model.is_caching
    model(torch.ones(2, 3))
    assert set(cache) == {"hook_in", "hook_out"}
    model.reset_hooks()
    assert not model.is_caching
    some: dict = {}
    model.cache_some(some, lambda n: n == "hook_out", remove_batch_dim=True)
    model(torch.ones(1, 3))
    assert set(some) == {"hook_out"} and some["hook_out"].shape == (3,)
    model.remove_all_hook_fns()
    got = model.add_caching_hooks(["hook_in"])
    model(torch.ones(1, 3))
    assert set(got) == {"hook_in"}
    model.reset_hooks()
    model.hook_in.ctx["k"] = 1
    model.clear_contexts()
    assert model.hook_in.ctx == {}
    cache2, fwd, bwd = model.get_caching_hooks(names_filter="hook_out", incl_bwd=True, device=None)
    assert [n for n, _ in fwd] == ["hook_out"] and [n for n, _ in bwd] == ["hook_out"] and cache2 == {}


def test_check_hooks_to_add_can_refuse():
    class Strict(Toy):
        def check_hooks_to_add(
            self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False
        ):
            if dir == "bwd":
                raise ValueError(f"no backward hooks on {hook_point_name}")

    model = Strict()
    model.add_hook("hook_in", lambda x, hook: None)
    try:
        model.add_hook("hook_in", lambda x, hook: None, dir="bwd")
    except ValueError as e:
        assert "hook_in" in str(e)
    else:
        raise AssertionError("check_hooks_to_add was not called")


def test_transformer_prepend_and_backward_hook_order():
    model = HookedTransformer(dict(d_model=16, d_head=4, n_layers=1, n_ctx=8, d_vocab=11, seed=0))
    name, fired = "blocks.0.hook_resid_post", []
    model.add_hook(name, lambda x, hook: fired.append(1))
    model.add_hook(name, lambda x, hook: fired.append(0), prepend=True)
    model.add_hook(name, lambda g, hook: fired.append("b1"), dir="bwd")
    model.add_hook(name, lambda g, hook: fired.append("b0"), dir="bwd", prepend=True)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert fired == [0, 1, "b0", "b1"]
    assert model.hook_dict[name].bwd_hooks[0].user_hook is not None
    model.reset_hooks()
