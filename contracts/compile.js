#!/usr/bin/env node
// Compile contracts/HNV.sol with the pinned solcjs into contracts/build/HNV.json.
//
// Usage: node contracts/compile.js [--out <path>]
//
// The artifact is committed, and a test recompiles into a temporary file and
// demands byte-identical output. Two things keep it reproducible:
//   - source unit names are repo-relative ("contracts/HNV.sol",
//     "@openzeppelin/..."), never absolute paths: they are hashed into the
//     metadata whose hash ends the bytecode, so an absolute path would give
//     every clone different bytecode;
//   - the JSON is written with a fixed key order and a trailing newline.
// Exits non-zero, with the compiler's messages on stderr, on any error.

"use strict";

const fs = require("fs");
const path = require("path");
const solc = require("solc");

const ROOT = path.resolve(__dirname, "..");
const NODE_MODULES = path.join(ROOT, "node_modules");
const CONTRACT_NAME = "HNV";
const SOURCE_UNIT = `contracts/${CONTRACT_NAME}.sol`;
const DEFAULT_OUT = path.join(__dirname, "build", `${CONTRACT_NAME}.json`);

// Recorded in the artifact as-is. solc 0.8.37 defaults to osaka already; it is
// spelled out so a compiler bump cannot silently move the target. anvil 1.7.1
// runs it: its default hardfork is "Bpo1" (per anvil_nodeInfo), which follows
// osaka, and tests/test_contract.py deploys this very artifact there.
const SETTINGS = {
  evmVersion: "osaka",
  optimizer: { enabled: true, runs: 200 },
};

const USAGE = "usage: node contracts/compile.js [--out <path>]";
const OUTPUTS = ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"];

function parseArgs(argv) {
  if (argv.length === 0) return { out: DEFAULT_OUT };
  if (argv.length === 2 && argv[0] === "--out" && argv[1]) {
    return { out: path.resolve(argv[1]) };
  }
  fail(`unexpected arguments: ${argv.join(" ")}\n${USAGE}`, 2);
}

function fail(message, code = 1) {
  process.stderr.write(`compile.js: ${message}\n`);
  process.exit(code);
}

// solc resolves OpenZeppelin's relative imports to "@openzeppelin/..." unit
// names before asking, so only that prefix ever needs serving from disk.
function findImport(unitName) {
  const inPackage = unitName.startsWith("@openzeppelin/contracts/");
  if (!inPackage || unitName.split("/").includes("..")) {
    return { error: `import not allowed: ${unitName}` };
  }
  try {
    return { contents: fs.readFileSync(path.join(NODE_MODULES, unitName), "utf8") };
  } catch (err) {
    return { error: `cannot read ${unitName}: ${err.message}` };
  }
}

function compile() {
  const source = fs.readFileSync(path.join(ROOT, SOURCE_UNIT), "utf8");
  const outputSelection = { [SOURCE_UNIT]: { [CONTRACT_NAME]: OUTPUTS } };
  const input = {
    language: "Solidity",
    sources: { [SOURCE_UNIT]: { content: source } },
    settings: { ...SETTINGS, outputSelection },
  };
  const raw = solc.compile(JSON.stringify(input), { import: findImport });
  const output = JSON.parse(raw);

  const diagnostics = output.errors || [];
  for (const diagnostic of diagnostics) {
    process.stderr.write(diagnostic.formattedMessage || `${diagnostic.message}\n`);
  }
  const errors = diagnostics.filter((diagnostic) => diagnostic.severity === "error");
  if (errors.length > 0) fail(`${errors.length} compiler error(s) in ${SOURCE_UNIT}`);

  return output.contracts[SOURCE_UNIT][CONTRACT_NAME];
}

function toArtifact(contract) {
  const bytecode = contract.evm.bytecode.object;
  const deployedBytecode = contract.evm.deployedBytecode.object;
  if (!bytecode || !deployedBytecode) {
    fail(`solc produced no bytecode for ${CONTRACT_NAME}`);
  }

  return {
    contractName: CONTRACT_NAME,
    compiler: { version: solc.version(), settings: SETTINGS },
    abi: contract.abi,
    bytecode: `0x${bytecode}`,
    deployedBytecode: `0x${deployedBytecode}`,
  };
}

function main() {
  const { out } = parseArgs(process.argv.slice(2));
  const artifact = toArtifact(compile());

  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, `${JSON.stringify(artifact, null, 2)}\n`);
  process.stdout.write(`wrote ${path.relative(process.cwd(), out) || out}\n`);
}

main();
