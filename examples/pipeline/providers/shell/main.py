"""A provider that runs a workflow's shell commands: once, or `parallel` times side by side,
followed by a job that lists what they produced."""

from dstack import Job, Provider, ResourceRequirements


class ShellProvider(Provider):
    def __init__(self):
        super().__init__(schema="schema.yaml")
        data = self.workflow.data
        self.commands = data["commands"]
        self.image = data.get("image", "python:3.9")
        self.artifacts = data.get("artifacts", [])
        self.parallel = data.get("parallel", 1)
        self.resources = ResourceRequirements.from_dict(data.get("resources", {}))

    def create_jobs(self) -> list[Job]:
        parts = [Job(image=self.image, commands=self.commands, artifacts=self.artifacts,
                     resources=self.resources, environment={"PART_INDEX": str(i)})
                 for i in range(self.parallel)]
        if self.parallel == 1:
            return parts
        summary = Job(image=self.image, commands=["echo all parts are done"], depends_on=parts)
        return parts + [summary]


if __name__ == "__main__":
    ShellProvider().start()
