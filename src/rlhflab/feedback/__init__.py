"""AI feedback pipelines built on the judges of `rlhflab.rewards.judge` (docs/judges.md):
labeling preference data (`label`), Constitutional AI (`constitutional`), the self-rewarding
loop with Con-J judge training (`self_rewarding`). `generate.ChatModel` is their one way of
sampling replies to conversations."""
