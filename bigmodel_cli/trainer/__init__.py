"""Around Hugging Face `Trainer`, which stays the loop: its arguments from a recipe (`arguments`),
the one subclass (`trainer.CountingTrainer`), its seeded sampling (`sampling`) and atomic
checkpoints (`checkpoints`), and the callbacks for time budgets, signals and the run header
(`callbacks`)."""
