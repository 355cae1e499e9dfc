"""MLflow, in one place: the store a process talks to (`store`), the model registry and
its champion (`registry`). mlflow itself is imported lazily by the functions that need
it, so importing this package stays cheap."""
