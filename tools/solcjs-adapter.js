#!/usr/bin/env node
// Makes the npm solc (solc-js) answer like a native solc binary, so py-solc-x can use it as
// `solc_binary`: `--version` prints native solc's version line, and `--standard-json` reads the
// JSON input on stdin and writes only the JSON output on stdout. Imports are resolved relative to
// the working directory, then from node_modules (the Python side normally inlines every source).
'use strict';
const fs = require('fs');
const path = require('path');

const solc = require(path.join(__dirname, '..', 'node_modules', 'solc'));

function findImport(importPath) {
  const roots = [process.cwd(), path.join(__dirname, '..'), path.join(__dirname, '..', 'node_modules')];
  for (const root of roots) {
    const candidate = path.resolve(root, importPath);
    if (candidate.startsWith(path.resolve(root)) && fs.existsSync(candidate)) {
      return { contents: fs.readFileSync(candidate, 'utf8') };
    }
  }
  return { error: 'File not found: ' + importPath };
}

function main(argv) {
  if (argv.includes('--version')) {
    process.stdout.write('solc, the solidity compiler commandline interface\n');
    process.stdout.write('Version: ' + solc.version() + '\n');
    return 0;
  }
  if (argv.includes('--standard-json')) {
    const input = fs.readFileSync(0, 'utf8');
    process.stdout.write(solc.compile(input, { import: findImport }));
    return 0;
  }
  process.stderr.write('solcjs-adapter: only --version and --standard-json are supported\n');
  return 2;
}

process.exitCode = main(process.argv.slice(2));
