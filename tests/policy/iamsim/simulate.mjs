// Reads a JSON list of simulations on stdin, evaluates each with @cloud-copilot/iam-simulate (AWS's
// documented evaluation logic: identity and resource policies, explicit denies, conditions) and prints one
// JSON list of results: {result, errors}. Used only by tests/policy/test_bucket_policies.py.
import { runSimulation } from '@cloud-copilot/iam-simulate';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const results = [];
for (const simulation of JSON.parse(Buffer.concat(chunks).toString('utf8'))) {
  const outcome = await runSimulation({ serviceControlPolicies: [], resourceControlPolicies: [], ...simulation }, {});
  results.push(outcome.resultType === 'error'
    ? { result: 'error', errors: outcome.errors }
    : { result: outcome.result.analysis.result, ignored: outcome.result.ignoredContextKeys ?? [] });
}
process.stdout.write(JSON.stringify(results));
