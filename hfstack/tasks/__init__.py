"""The tasks the assistant is taught, scored and rewarded on (identity, arithmetic, counting, spelling),
with the judges and open-ended prompts; shared by SFT, eval, RL and RLHF.
Each task is one module owning its data, scoring and reward; hfstack.tasks.registry names them all."""
