"""Skills: what a node can run. Each one turns a TaskSpec into a running TaskRun."""
