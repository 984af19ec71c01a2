"""Training the tiny family: the policy (training/policy.py), reward models (training/reward.py) and
their labels from the policy's own search (training/step_labels.py, training/labels.py).

It sits above the strategies and the runner: training reads what inference
makes, and nothing below imports it.
"""
