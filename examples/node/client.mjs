// The demo client in Node.js: numbered requests, request 2 without its address,
// Lazy Pirate retries. The wire format is docs/protocol.md.
//
//   node client.mjs [--connect ENDPOINT] [--requests N] [--timeout-ms MS] [--tries N]
//   node client.mjs --help
//
// Environment: SERVER_CONNECT, CLIENT_REQUESTS, CLIENT_TIMEOUT_MS, CLIENT_TRIES.
// Exit status: 0 when every request was answered, 1 when one was not, 2 on a usage error.

import os from "node:os"
import { parseArgs } from "node:util"
import zmq from "zeromq"

const MALFORMED = 2 // the request sent without its address frame
const HEARTBEAT_MS = 10000 // as the server: keeps an idle connection open through nginx
const STATUSES = ["Server response", "Invalid message", "Server error", "Server timeout"]

const USAGE =
  "usage: node client.mjs [--help] [--connect ENDPOINT] [--requests N] [--timeout-ms MS] [--tries N]"

const HELP = `${USAGE}

The demo client: numbered requests, request 2 without its address, Lazy Pirate
retries. Exit 0 when every request was answered, 1 when one was not, 2 on a
usage error.

options:
  --help               show this help and exit
  --connect ENDPOINT   the server or nginx (env SERVER_CONNECT, default
                       tcp://localhost:5555)
  --requests N         how many requests (env CLIENT_REQUESTS, default 10)
  --timeout-ms MS      wait per reply before a retry (env CLIENT_TIMEOUT_MS,
                       default 2500)
  --tries N            tries per request, the first included (env CLIENT_TRIES,
                       default 3)`

function usage(message) {
  console.error(`error: ${message}`)
  console.error(USAGE)
  process.exit(2)
}

function wholeNumber(name, text, least) {
  if (!/^\d+$/.test(text) || Number(text) < least) {
    usage(`${name} must be a whole number >= ${least}, not '${text}'`)
  }
  return Number(text)
}

function options() {
  let parsed
  try {
    parsed = parseArgs({
      options: {
        connect: { type: "string" },
        requests: { type: "string" },
        "timeout-ms": { type: "string" },
        tries: { type: "string" },
        help: { type: "boolean" },
      },
    }).values
  } catch (error) {
    usage(error.message)
  }
  if (parsed.help) {
    console.log(HELP)
    process.exit(0)
  }
  const env = process.env
  return {
    endpoint: parsed.connect ?? env.SERVER_CONNECT ?? "tcp://localhost:5555",
    requests: wholeNumber("--requests", parsed.requests ?? env.CLIENT_REQUESTS ?? "10", 0),
    timeoutMs: wholeNumber("--timeout-ms", parsed["timeout-ms"] ?? env.CLIENT_TIMEOUT_MS ?? "2500", 1),
    tries: wholeNumber("--tries", parsed.tries ?? env.CLIENT_TRIES ?? "3", 1),
  }
}

function openSocket(config) {
  const sock = new zmq.Request({
    linger: 0, // close drops anything unsent: a stuck socket is thrown away whole
    receiveTimeout: config.timeoutMs, // receive() rejects with EAGAIN after this
    sendTimeout: config.timeoutMs,
    heartbeatInterval: HEARTBEAT_MS,
    heartbeatTimeout: 3 * HEARTBEAT_MS,
  })
  sock.connect(config.endpoint)
  return sock
}

// Lazy Pirate: send, wait up to timeoutMs for the reply; if none comes, the REQ
// socket is stuck in its send-receive cycle, so close it and resend on a fresh one.
async function request(state, frames, number) {
  for (let attempt = 1; attempt <= state.config.tries; attempt++) {
    state.socket ??= openSocket(state.config)
    try {
      await state.socket.send(frames)
      return await state.socket.receive()
    } catch (error) {
      if (error.code !== "EAGAIN") throw error
      state.socket.close()
      state.socket = null
    }
  }
  const { endpoint, tries } = state.config
  throw new Error(`server at ${endpoint} did not answer request ${number} after ${tries} tries`)
}

function replyStatus(frames) {
  const status = frames[0]?.toString()
  if (frames.length !== 3 || !STATUSES.includes(status)) {
    throw new Error(`malformed reply: ${frames.length} frame(s), status '${status}'`)
  }
  return status
}

async function main() {
  const state = { config: options(), socket: null }
  const address = `${os.hostname()}-${process.pid}`
  try {
    for (let number = 0; number < state.config.requests; number++) {
      const data = `request ${number}`
      const frames = number === MALFORMED ? [data] : [address, data]
      console.log(`Sending request: ${number}`)
      const reply = await request(state, frames, number)
      console.log(`Received response: ${replyStatus(reply)}`)
    }
  } catch (error) {
    console.error(`error: ${error.message}`)
    process.exitCode = 1
  } finally {
    state.socket?.close()
  }
}

await main()
