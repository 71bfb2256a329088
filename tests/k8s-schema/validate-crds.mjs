// Validates every PodMonitor, ServiceMonitor and PrometheusRule in the given YAML files
// against the prometheus-operator CRD schemas; prints one line per resource and exits 1 if
// any fails. (kubernetes-validate covers the built-in kinds, not these.)
import fs from 'node:fs';
import YAML from 'yaml';
import {
  PodMonitor,
  PrometheusRule,
  ServiceMonitor,
} from '@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1';

const kinds = { PodMonitor, PrometheusRule, ServiceMonitor };
let failed = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of YAML.parseAllDocuments(fs.readFileSync(file, 'utf8'))) {
    const obj = doc.toJS();
    if (!obj || !(obj.kind in kinds)) continue;
    const what = `${file} ${obj.kind}/${obj.metadata?.name}`;
    try {
      new kinds[obj.kind](obj).validate();
      console.log(`valid ${what}`);
    } catch (e) {
      failed++;
      console.log(`INVALID ${what}: ${e.message}`);
    }
  }
}
process.exit(failed ? 1 : 0);
