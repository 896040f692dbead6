"""Faults injected into one process of a launch, for tests/test_agreed_stops.py.

On PYTHONPATH, Python imports this module at every start. It acts only in a launched worker (RANK
set) and only when BIGMODEL_TEST_FAULT says what to do, as `KIND:RANK:STEP[:MARKER]`:
- `sigterm:R:S`: process R sends itself SIGTERM when it starts step S (the others receive nothing);
- `nan:R:S`: process R's loss at step S is NaN, before its backward pass;
- `slow:R:S:FILE`: every process sleeps 0.3 s a step from step S on, and process R writes FILE there
  (the test then signals the launcher).
"""

import os

FAULT = os.environ.get("BIGMODEL_TEST_FAULT")

if FAULT and "RANK" in os.environ:
    import signal
    import time

    from bigmodel_cli.trainer.trainer import CountingTrainer

    kind, target, at, *marker = FAULT.split(":", 3)
    target, at, here = int(target), int(at), int(os.environ["RANK"])
    original = CountingTrainer.training_step

    def training_step(self, model, inputs, num_items_in_batch=None):
        step = self.state.global_step + 1  # the step this micro-batch belongs to
        if kind == "sigterm" and here == target and step == at:
            os.kill(os.getpid(), signal.SIGTERM)
        if kind == "slow" and step >= at:
            if here == target and marker:
                with open(marker[0], "w") as f:
                    f.write(str(step))
            time.sleep(0.3)
        if kind == "nan" and here == target and step == at:
            compute_loss = self.compute_loss
            self.compute_loss = lambda *args, **kwargs: compute_loss(*args, **kwargs) * float("nan")
            try:
                return original(self, model, inputs, num_items_in_batch)
            finally:
                del self.compute_loss
        return original(self, model, inputs, num_items_in_batch)

    CountingTrainer.training_step = training_step
