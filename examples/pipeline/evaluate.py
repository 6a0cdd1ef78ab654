"""A stand-in for evaluation: reads model/model.json (from `train`), writes report/report.txt."""
import json

with open("model/model.json") as f:
    model = json.load(f)
report = f"model trained for {model['epochs']} epochs on {model['rows']} rows: mean {model['mean']:.2f}\n"
with open("report/report.txt", "w") as f:
    f.write(report)
print(report, end="")
