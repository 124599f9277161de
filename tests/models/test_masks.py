"""Mask hooks against independent computations: weight zeroing and row-by-row runs."""

import copy

import torch

from shadow_sweep.models.masks import LinearInputMasks


def _ids(loaded, batch=3, tokens=11, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, loaded.model.config.vocab_size, (batch, tokens), generator=generator)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _masked_logits(loaded, ids, heads=None, neurons=None):
    with LinearInputMasks(loaded.model, loaded.adapter, loaded.shape) as masks:
        masks.set(heads, neurons)
        return _logits(loaded.model, ids)


def _ones(loaded, batch):
    s = loaded.shape
    return torch.ones(batch, s.num_layers, s.num_heads), torch.ones(batch, s.num_layers, s.num_neurons)


def test_all_ones_masks_are_bit_identical(tiny):
    ids = _ids(tiny)
    reference = _logits(tiny.model, ids)
    assert torch.equal(_masked_logits(tiny, ids, *_ones(tiny, ids.shape[0])), reference)


def test_zeroed_head_equals_zeroed_output_projection_columns(tiny):
    layer, head = 1, 2
    d = tiny.shape.head_dim
    ids = _ids(tiny)
    reference_model = copy.deepcopy(tiny.model)
    o_proj = tiny.adapter.head_context_modules(reference_model)[layer]
    with torch.no_grad():
        o_proj.weight[:, head * d:(head + 1) * d] = 0.0
    expected = _logits(reference_model, ids)
    heads, _ = _ones(tiny, 1)
    heads[:, layer, head] = 0.0
    masked = _masked_logits(tiny, ids, heads=heads)
    torch.testing.assert_close(masked, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(masked, _logits(tiny.model, ids), atol=1e-4)  # the head mattered


def test_zeroed_neuron_equals_zeroed_down_projection_column(tiny):
    layer, neuron = 2, 5
    ids = _ids(tiny)
    reference_model = copy.deepcopy(tiny.model)
    with torch.no_grad():
        tiny.adapter.neuron_activation_modules(reference_model)[layer].weight[:, neuron] = 0.0
    expected = _logits(reference_model, ids)
    _, neurons = _ones(tiny, 1)
    neurons[:, layer, neuron] = 0.0
    torch.testing.assert_close(_masked_logits(tiny, ids, neurons=neurons), expected, rtol=0, atol=1e-5)


def test_batch_with_per_row_masks_equals_rows_alone(tiny):
    ids = _ids(tiny, batch=3)
    generator = torch.Generator().manual_seed(1)
    s = tiny.shape
    heads = (torch.rand(3, s.num_layers, s.num_heads, generator=generator) > 0.4).float()
    neurons = (torch.rand(3, s.num_layers, s.num_neurons, generator=generator) > 0.5).float()
    with LinearInputMasks(tiny.model, tiny.adapter, tiny.shape) as masks:
        masks.set(heads, neurons)
        batched = _logits(tiny.model, ids)
        for row in range(3):
            masks.set(heads[row:row + 1], neurons[row:row + 1])
            torch.testing.assert_close(batched[row:row + 1], _logits(tiny.model, ids[row:row + 1]),
                                       rtol=0, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_masks_set_during_the_forward_apply_to_later_layers(tiny):
    """A hook on layer 0's output may set the masks of later layers in the same forward."""
    ids = _ids(tiny, batch=2)
    s = tiny.shape
    heads, neurons = _ones(tiny, 2)
    heads[:, 1:, 0] = 0.0
    neurons[:, 1:, :7] = 0.0
    with LinearInputMasks(tiny.model, tiny.adapter, tiny.shape) as masks:
        masks.set(heads, neurons)
        expected = _logits(tiny.model, ids)
        masks.clear()
        layer0 = tiny.adapter.decoder_layers(tiny.model)[0]
        handle = layer0.register_forward_hook(lambda *_: masks.set(heads, neurons))
        try:
            during = _logits(tiny.model, ids)
        finally:
            handle.remove()
    assert s.num_layers > 1
    torch.testing.assert_close(during, expected, rtol=0, atol=0)


def test_exit_restores_the_model_exactly(tiny):
    ids = _ids(tiny)
    before = _logits(tiny.model, ids)
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    heads, neurons = _ones(tiny, 1)
    heads.zero_()
    with LinearInputMasks(tiny.model, tiny.adapter, tiny.shape) as masks:
        masks.set(heads, neurons * 0.0)
        assert not torch.allclose(_logits(tiny.model, ids), before)
    assert torch.equal(_logits(tiny.model, ids), before)
    assert all(torch.equal(v, state[k]) for k, v in tiny.model.state_dict().items())
    modules = tiny.adapter.head_context_modules(tiny.model) + tiny.adapter.neuron_activation_modules(tiny.model)
    assert all(len(m._forward_pre_hooks) == 0 for m in modules)


def test_wrong_mask_shape_is_rejected(tiny):
    with LinearInputMasks(tiny.model, tiny.adapter, tiny.shape) as masks:
        try:
            masks.set(heads=torch.ones(1, tiny.shape.num_layers + 1, tiny.shape.num_heads))
        except ValueError as error:
            assert "heads mask must have shape" in str(error)
        else:
            raise AssertionError("a mask of the wrong shape was accepted")
