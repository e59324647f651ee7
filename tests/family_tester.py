"""Checks that every early-exit family must pass. A family's test class sets the attributes and implements the hooks.

Hooks:
    build_model(): a fresh model in eval mode.
    make_inputs(batch_size): a dict of model inputs with mixed lengths (right padding).
    never_exit: forward kwargs under which no intermediate exit fires.
    always_exit: forward kwargs under which the first exit fires for everything.
    first_exit_logits(model, inputs): the logits of the first exit (or first member) for every example.
    exit_key: the output field that holds the per-example exit position.
"""

import torch
from transformers import AutoConfig, AutoModel


class EarlyExitFamilyTesterMixin:
    model_class = None
    config_class = None
    task_auto_class = None
    exit_key = "exit_layer"
    never_exit: dict = {}
    always_exit: dict = {}

    def build_model(self):
        raise NotImplementedError

    def make_inputs(self, batch_size=6):
        raise NotImplementedError

    def first_exit_logits(self, model, inputs):
        raise NotImplementedError

    def run(self, model, inputs, **kwargs):
        with torch.no_grad():
            return model(**inputs, **kwargs)

    def test_output_shapes_and_exit_range(self):
        model = self.build_model()
        inputs = self.make_inputs()
        out = self.run(model, inputs)
        batch_size = inputs["input_ids"].shape[0]
        assert out.logits.shape[0] == batch_size
        assert out.flops.shape == (batch_size,)
        assert (out.flops > 0).all()
        exits = getattr(out, self.exit_key)
        assert exits.shape[0] == batch_size
        assert exits.min() >= 0

    def test_never_exit_equals_full_depth(self):
        model = self.build_model()
        inputs = self.make_inputs()
        never = self.run(model, inputs, **self.never_exit)
        full = self.run(model, inputs, early_exit=False)
        torch.testing.assert_close(never.logits, full.logits, rtol=0, atol=1e-6)
        assert torch.equal(getattr(never, self.exit_key), getattr(full, self.exit_key))

    def test_always_exit_gives_first_exit(self):
        model = self.build_model()
        inputs = self.make_inputs()
        out = self.run(model, inputs, **self.always_exit)
        torch.testing.assert_close(out.logits, self.first_exit_logits(model, inputs), rtol=0, atol=1e-6)

    def test_overrides_do_not_mutate_config(self):
        model = self.build_model()
        before = model.config.to_dict()
        self.run(model, self.make_inputs(), **self.always_exit)
        self.run(model, self.make_inputs(), early_exit=False)
        assert model.config.to_dict() == before

    def test_save_and_reload_through_auto_classes(self, tmp_path):
        model = self.build_model()
        inputs = self.make_inputs()
        expected = self.run(model, inputs)
        model.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").is_file()
        assert not list(tmp_path.glob("*.bin"))
        config = AutoConfig.from_pretrained(tmp_path)
        assert type(config) is self.config_class
        for auto_class in (AutoModel, self.task_auto_class):
            reloaded = auto_class.from_pretrained(tmp_path).eval()
            assert type(reloaded) is self.model_class
            out = self.run(reloaded, inputs)
            torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=0)
            assert torch.equal(getattr(out, self.exit_key), getattr(expected, self.exit_key))

    def test_batch_invariance(self):
        model = self.build_model()
        inputs = self.make_inputs(batch_size=8)
        settings = getattr(self, "mixed_exit", {})
        batched = self.run(model, inputs, **settings)
        for i in range(inputs["input_ids"].shape[0]):
            length = int(inputs["attention_mask"][i].sum())
            single = self.run(model, {k: v[i : i + 1, :length] for k, v in inputs.items()}, **settings)
            exits, logits = getattr(batched, self.exit_key)[i], batched.logits[i]
            if exits.dim() == 1:  # per-token outputs: compare the real positions
                exits, logits = exits[:length], logits[:length]
            assert torch.equal(getattr(single, self.exit_key)[0], exits)
            torch.testing.assert_close(single.logits[0], logits, rtol=0, atol=1e-5)

    # the range of per-example thresholds spread over a batch (the config's criterion), from never to always exiting
    example_thresholds: tuple[float, float] = (0.0, 1.0)

    def test_per_example_thresholds_decide_as_single_calls(self):
        # a serving batch: every example carries its own threshold and decides as it would in a call of its own
        model = self.build_model()
        inputs = self.make_inputs(batch_size=8)
        thresholds = torch.linspace(*self.example_thresholds, 8)
        batched = self.run(model, inputs, exit_threshold=thresholds)
        exits = []
        for i in range(8):
            length = int(inputs["attention_mask"][i].sum())
            single = self.run(
                model, {k: v[i : i + 1, :length] for k, v in inputs.items()}, exit_threshold=float(thresholds[i])
            )
            exit_position, logits = getattr(batched, self.exit_key)[i], batched.logits[i]
            if exit_position.dim() == 1:
                exit_position, logits = exit_position[:length], logits[:length]
            assert torch.equal(getattr(single, self.exit_key)[0], exit_position)
            torch.testing.assert_close(single.logits[0], logits, rtol=0, atol=1e-5)
            exits.append(exit_position.float().mean())
        assert len(set(exits)) > 1  # the thresholds made a difference
