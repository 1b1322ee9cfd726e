"""Red-team a reward model: search for answers it over-scores relative to the held-out judge, before RL finds them.

    hfstack rm-attack --reward_model_path RUN/rm [--preferences RUN/prefs] [--search_rounds 40]

`hfstack reward` ends with the same search on the model it trained. Tries hand-written attacks
(repetition, copying the prompt, special-token and markup spam, extreme lengths, a refusal, flattery) and
a greedy search over token edits on held-out prompts, scores each with the reward model and the judge,
and compares both with the answers people chose (hfstack.rlalgo.attacks). Prints the table and writes
`attacks.jsonl` beside the reward model (or `--output`), where `hfstack rlhf`'s watch and the report card
find it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hfstack.core.config import ConfigError, bounded, check_fields, model_folder, read_yaml
from hfstack.core.model import load_reward_model
from hfstack.core.pretrained import looks_like_hub_id, resolve_model
from hfstack.core.renames import renamed
from hfstack.dataprep.preferences import load_pairs, one_shape
from hfstack.rlalgo.attacks import AttackSettings, print_attacks, red_team, write_attacks


@renamed(reward_model="reward_model_path", preferences="dataset_name")
@dataclass
class RMAttackConfig:
    reward_model_path: str = model_folder("runs/tiny/rm", must_exist=True)  # the reward model: folder or Hub id
    dataset_name: str | None = None  # held-out pairs: a rank-stage dir or a file; default: the reward run's own
    judge: str = "hfstack.tasks.judges:reference_judge"  # held-out judge: judge(prompt, [answers]) -> scores
    num_prompts: int = bounded(16, ge=1)  # held-out prompts each attack is tried on
    search_prompts: int = bounded(4, ge=0, why="0 skips the token-edit search")  # prompts the edit search runs on
    search_rounds: int = bounded(20, ge=1)  # greedy rounds per prompt
    search_candidates: int = bounded(16, ge=1)  # one-token edits tried per round
    max_length: int = bounded(192, ge=2)  # tokens per conversation the reward model sees
    seed: int = 0  # the edit search's randomness
    output: str | None = None  # default: <reward_model_path>/attacks.jsonl

    def __post_init__(self):
        check_fields(self, "rm-attack")

    def settings(self) -> AttackSettings:
        return AttackSettings(judge=self.judge, num_prompts=self.num_prompts, search_prompts=self.search_prompts,
                              search_rounds=self.search_rounds, search_candidates=self.search_candidates,
                              max_length=self.max_length, seed=self.seed)


def held_out_pairs(stage: str, reward_folder: Path, dataset_name: str | None) -> list[dict]:
    """The test pairs of `dataset_name`, or of the preferences the reward model was trained on (its
    config.yaml names them)."""
    if dataset_name is None:
        recorded = reward_folder / "config.yaml"
        dataset_name = (read_yaml(recorded) or {}).get("dataset_name") if recorded.is_file() else None
        if not dataset_name:
            raise ConfigError(f"{stage}: '{reward_folder}' does not say which preferences trained it; "
                              "name held-out pairs with --preferences (a rank-stage dir or a file)")
    return one_shape([], load_pairs(dataset_name, "test", stage))[1]


def rm_attack(cfg: RMAttackConfig) -> Path:
    if cfg.output is None and looks_like_hub_id(cfg.reward_model_path):  # never write into the Hub's cache
        raise ConfigError(f"rm-attack: '{cfg.reward_model_path}' is a Hub model; name where the attacks go "
                          "with --output")
    folder = Path(resolve_model(cfg.reward_model_path, None, "rm-attack", "reward model"))
    pairs = held_out_pairs("rm-attack", folder, cfg.dataset_name)
    if not pairs:
        raise ConfigError("rm-attack: no held-out preference pairs to attack on")
    model, tokenizer = load_reward_model(str(folder))
    rows, baseline = red_team(model, tokenizer, pairs, cfg.settings())
    out = Path(cfg.output) if cfg.output else folder / "attacks.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_attacks(rows, baseline, out)
    print_attacks(rows, baseline)
    print(f"[rm-attack] {sum(r['found'] for r in rows)} of {len(rows)} attacks found; written to {out}")
    return out


# the registry's names for this stage (hfstack.stages): its config and its runner
Config = RMAttackConfig
run = rm_attack
