"""A refinement-tuned SmolLM2, asked to act in a held-in household episode, answers `Thought: … / Action: …`.

The shortest real run: LoRA on grounded-teacher conversations (refinement data with masked erroneous
turns), reloaded from disk the way the evaluation loads it, prompted with the evaluation agent's own
household instruction, its reply read by the agent's parser. Measured on the shared 2-core CPU: about
2-3 minutes, most of it the two optimizer steps on ~500-token examples.

Base SmolLM2-135M-Instruct already follows the format on this prompt (the instruction shows an example),
so this guards against tuning *breaking* the format, which is what a wrong mask or template does, and
what too strong a short run does: at learning rate 1e-3, 2 or 4 steps on these conversations made the
reply loop inside its Thought ("I look at the toilet 1. I look at the toilet 2. ...") with no Action
within 64 tokens (measured). A run long enough to *teach* the format is minutes of CPU per step here.
"""

import pytest

from refinelib.envs import make_instance, suite
from refinelib.eval import agent
from refinelib.eval.policies import TransformersPolicy
from refinelib.synth import conversation, teacher, themes
from refinelib.tune.models import load as load_model
from refinelib.tune.train import train
from refinelib.tune.train_config import TrainConfig


def refinement_records(n: int) -> list[dict]:
    records = []
    for seed in range(n):
        script = themes.generate_script(seed)
        trajectory = teacher.grounded_trajectory(script, seed, error_rate=0.3)
        records.append(conversation.to_conversation(script, trajectory, f"grounded-{seed}"))
    return records


@pytest.mark.slow
def test_the_tuned_model_answers_a_held_in_household_episode_in_the_agent_format(tmp_path):
    records = refinement_records(4)
    assert any(t["from"] == "gpt" and not t["loss"] for r in records for t in r["conversations"])
    # No warmup: with the default 3 % of 2 steps, the first step would run at learning rate 0.
    result = train(TrainConfig(train_records=records, eval_fraction=0, max_steps=2, batch_size=2,
                               learning_rate=2e-4, warmup_ratio=0.0, max_length=512,
                               output_dir=str(tmp_path / "run"), save_steps=1000))
    assert result.completed and result.counts["train"]["kept"] >= 2

    model, tokenizer = load_model(tmp_path / "run")  # base model + the saved adapter
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # the adapter was trained (B starts at 0)

    instance = suite("household_held_in").instances[0]
    state = agent.EpisodeState(make_instance(instance), instance.seed)
    policy = TransformersPolicy(model, tokenizer, name="tuned", max_new_tokens=64)
    reply = policy.generate([state.prompt()])[0]
    thought, action = agent.parse(reply)
    assert thought and action, f"no Thought/Action in {reply!r}"
    assert reply.lstrip().startswith("Thought:"), reply
    turn = state.advance(reply)
    assert not turn.format_error
