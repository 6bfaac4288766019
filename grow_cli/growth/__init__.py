"""Growing a checkpoint: what to grow (`spec`), the planner (`plan`), the grown config (`config`), the streaming
executor (`expand`), the function-preservation check (`verify`), `grow inspect`'s description (`describe`), the
built-in example (`demo`) and the human form of expand's report (`render`)."""
