"""Fetches Synapse's official Grafana dashboard at the pinned Synapse tag into Grafana's dashboard
directory (the grafana-dashboards one-shot job, standard library only). The dashboard is never copied
into commstack's repository: it is loaded at deploy time from its upstream source,
element-hq/synapse contrib/grafana/synapse.json at the tag of configs/images.yaml's synapse image.

    python3 grafana_dashboards.py URL OUT_FILE DATASOURCE_UID
"""

import json
import sys
import urllib.request


def main(url: str, out_file: str, datasource_uid: str) -> int:
    with urllib.request.urlopen(url, timeout=60) as response:
        dashboard = json.loads(response.read())
    if not isinstance(dashboard, dict) or "panels" not in dashboard:
        print(f"error: {url} is not a Grafana dashboard", file=sys.stderr)
        return 1
    # Exported dashboards name their data source as an input (${DS_PROMETHEUS}); provisioning has no
    # import step to fill it, so it becomes the provisioned Prometheus's uid.
    text = json.dumps(dashboard).replace("${DS_PROMETHEUS}", datasource_uid)
    dashboard = json.loads(text)
    dashboard.pop("__inputs", None)
    dashboard["id"] = None
    with open(out_file + ".partial", "w") as handle:
        json.dump(dashboard, handle)
    import os

    os.replace(out_file + ".partial", out_file)
    print(f"loaded {dashboard.get('title', 'dashboard')} from {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
