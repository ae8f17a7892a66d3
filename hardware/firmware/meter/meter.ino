// Microgrid meter firmware: one DC meter (INA226 current/voltage sensor + relay) speaking the
// line protocol of hardware/PROTOCOL.md, version 3, at 115200 baud 8N1. The meter owns a
// secp256k1 key, made at first boot and kept in EEPROM (never sent), and signs every reading
// (EIP-712, eip712.cpp), with the recent block the host passes in READ, for the domain it was
// given once at installation (INSTALL).
//
// Target board: a Raspberry Pi Pico (RP2040) or an ESP32 board, 3.3 V logic (PROTOCOL.md, "Target
// board": an Uno/Nano has no random generator for the key and takes seconds per signature).
// Wiring: INA226 SDA/SCL to the board's I2C pins (Pico: GP4/GP5), VCC->3V3, GND->GND, address
// 0x40 (A0 = A1 = GND); shunt in the positive line, VBUS on the measured side; relay module IN->
// RELAY_PIN. Libraries: micro-ecc and Crypto (SHA256), see meter_sign_uecc.cpp.
// The host harness in ../host compiles this file with g++ and libsecp256k1 and drives it from
// the tests.

#include <Arduino.h>
#include <EEPROM.h>
#include <Wire.h>

#include "eip712.h"
#include "keccak256.h"
#include "meter_sign.h"

// ---- Per-meter settings: edit before flashing -------------------------------------------------
#define METER_ID "meter-01"      // 1..32 of [A-Za-z0-9._-]
#define METER_KIND "supply"      // "supply" (PV -> battery) or "load" (battery -> consumer)
#define FIRMWARE_VERSION "2.0.0"
static const uint32_t RATED_POWER_W = 1000;  // register the meter on chain with this rating
static const uint32_t WATCHDOG_S = 10;       // relay opens after this long without a valid command
static const uint8_t RELAY_PIN = 7;
static const bool RELAY_ACTIVE_HIGH = true;
static const uint8_t INA226_ADDRESS = 0x40;
static const int32_t SHUNT_MICROOHM = 2000;  // 2 mOhm: 40.96 A full scale
static const uint32_t SAMPLE_MS = 100;
static const uint32_t EEPROM_STEP_WH = 10;   // persist the counter every 10 Wh ...
static const uint8_t EEPROM_SLOTS = 64;      // ... rotating over 64 slots to spread the wear
static const uint32_t SEQUENCE_STEP = 256;   // reserve sequence numbers 256 at a time ...
static const uint8_t SEQUENCE_SLOTS = 16;    // ... rotating over 16 slots

// ---- EEPROM layout (PROTOCOL.md, "The meter's EEPROM") -----------------------------------------
static const int EEPROM_SIZE = 1024;
static const int EE_COUNTER = 0;     // 64 x uint32: the energy counter, largest value wins
static const int EE_SEQUENCE = 256;  // 16 x uint32: the highest sequence number reserved
static const int EE_KEY = 320;       // KeyRecord
static const int EE_DOMAIN = 360;    // DomainRecord
static const uint32_t KEY_MAGIC = 0x3159454BUL;     // "KEY1"
static const uint32_t DOMAIN_MAGIC = 0x314D4F44UL;  // "DOM1"
struct KeyRecord {
  uint32_t magic;
  uint8_t privateKey[32];
  uint16_t crc;  // CRC-16 of privateKey: a damaged key is not used
};
struct DomainRecord {
  uint32_t magic;
  uint8_t data[28];  // the chain id (8 bytes, big-endian), then the registry address
  uint16_t crc;      // CRC-16 of data
};

// ---- Protocol constants (PROTOCOL.md) ----------------------------------------------------------
static const uint8_t MAX_LINE = 120;  // longest request: bytes before LF, a trailing CR included
static const uint8_t MAX_REPLY = 255;  // longest reply, "$" to the CRC
enum ErrorCode : uint8_t {
  ERR_CHECKSUM = 1, ERR_FRAME = 2, ERR_TOO_LONG = 3, ERR_UNKNOWN = 4, ERR_ARGUMENT = 5,
  ERR_SENSOR = 6, ERR_PROVISIONED = 7, ERR_NOT_PROVISIONED = 8, ERR_KEY = 9
};
static const char *const ERROR_TEXT[] = {
  "", "bad checksum", "bad frame", "line too long", "unknown command", "bad argument",
  "sensor fault", "already provisioned", "not provisioned", "key fault"
};
static const uint64_t MICROJOULES_PER_WH = 3600000000ULL;

// ---- State (all set in setup(), so a reset starts clean) ---------------------------------------
static char line[MAX_LINE + 1];
static uint8_t lineLen;
static bool lineOverflow;   // discarding a too-long line up to its LF
static bool relayClosed;
static uint32_t lastValidMs;  // last command answered OK: feeds the watchdog
static uint32_t lastSampleMs;
static uint32_t samples;
static bool sensorOk;
static int32_t busMillivolts, currentMilliamps, powerMilliwatts;
static uint32_t energyWh, savedWh;
static uint64_t residualMicrojoules;  // energy not yet a whole Wh
static bool keyOk;                    // a valid key is in EEPROM (made at first boot)
static uint8_t privateKey[32];        // never leaves the meter
static uint8_t meterAddress[20];      // keccak256(public key)[12..32]
static bool provisioned;              // INSTALL was accepted once: the domain is fixed
static uint64_t chainId;
static uint8_t registry[20];
static uint8_t domainSeparator[32];
static uint32_t lastSequence;      // the last sequence number signed (or possibly signed)
static uint32_t reservedSequence;  // the highest one recorded in EEPROM as possibly used

// ---- Helpers -----------------------------------------------------------------------------------

// CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final XOR.
static uint16_t crc16(const char *data, size_t len) {
  uint16_t crc = 0xFFFF;
  for (size_t i = 0; i < len; i++) {
    crc ^= (uint16_t)((uint8_t)data[i]) << 8;
    for (uint8_t bit = 0; bit < 8; bit++) {
      crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
  }
  return crc;
}

static bool isUpperHex(char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); }

static uint16_t hexValue(const char *text) {
  uint16_t value = 0;
  for (uint8_t i = 0; i < 4; i++) {
    value = (uint16_t)((value << 4) | (text[i] <= '9' ? text[i] - '0' : text[i] - 'A' + 10));
  }
  return value;
}

// Sequence number: "0" or 1..5 digits without a leading zero, at most 65535; -1 if not.
static int32_t parseSeq(const char *text) {
  size_t len = strlen(text);
  if (len == 0 || len > 5 || (len > 1 && text[0] == '0')) return -1;
  int32_t value = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9') return -1;
    value = value * 10 + (text[i] - '0');
  }
  return value <= 65535 ? value : -1;
}

static bool isCommandName(const char *text) {
  size_t len = strlen(text);
  if (len == 0 || len > 8) return false;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < 'A' || text[i] > 'Z') return false;
  }
  return true;
}

// Writes `milli` / 1000 with 1, 2 or 3 decimals (truncated), e.g. 812437 mW, 1 -> "812.4".
static const char *fixed(char *out, size_t size, int32_t milli, uint8_t decimals) {
  uint32_t magnitude = milli < 0 ? (uint32_t)(-(int64_t)milli) : (uint32_t)milli;
  const char *sign = milli < 0 ? "-" : "";
  unsigned long whole = magnitude / 1000, frac = magnitude % 1000;
  if (decimals == 1) snprintf(out, size, "%s%lu.%01lu", sign, whole, frac / 100);
  else if (decimals == 2) snprintf(out, size, "%s%lu.%02lu", sign, whole, frac / 10);
  else snprintf(out, size, "%s%lu.%03lu", sign, whole, frac);
  return out;
}

// Writes `value` in decimal (avr-libc's printf has no %llu); returns the end of the text.
static char *appendUint64(char *out, uint64_t value) {
  char digits[21];
  uint8_t count = 0;
  do {
    digits[count++] = (char)('0' + value % 10);
    value /= 10;
  } while (value > 0);
  while (count > 0) *out++ = digits[--count];
  *out = '\0';
  return out;
}

// Writes "0x" and the bytes in lower-case hex; returns the end of the text.
static char *appendHex(char *out, const uint8_t *bytes, uint8_t count) {
  static const char DIGITS[] = "0123456789abcdef";
  *out++ = '0';
  *out++ = 'x';
  for (uint8_t i = 0; i < count; i++) {
    *out++ = DIGITS[bytes[i] >> 4];
    *out++ = DIGITS[bytes[i] & 15];
  }
  *out = '\0';
  return out;
}

static int8_t hexDigit(char c) {
  if (c >= '0' && c <= '9') return (int8_t)(c - '0');
  if (c >= 'a' && c <= 'f') return (int8_t)(c - 'a' + 10);
  return -1;  // upper case is not accepted: one spelling per address
}

// "0x" and 2 x size lower-case hex digits.
static bool parseHexBytes(const char *text, uint8_t *out, uint8_t size) {
  if (strlen(text) != 2 + 2 * (size_t)size || text[0] != '0' || text[1] != 'x') return false;
  for (uint8_t i = 0; i < size; i++) {
    int8_t high = hexDigit(text[2 + 2 * i]), low = hexDigit(text[3 + 2 * i]);
    if (high < 0 || low < 0) return false;
    out[i] = (uint8_t)((high << 4) | low);
  }
  return true;
}

// "0x" and 40 lower-case hex digits.
static bool parseAddress(const char *text, uint8_t out[20]) { return parseHexBytes(text, out, 20); }

// "0" or 1 to 20 digits without a leading zero, 0..2^64-1.
static bool parseUint64(const char *text, uint64_t &out) {
  size_t len = strlen(text);
  if (len == 0 || len > 20 || (text[0] == '0' && len > 1)) return false;
  uint64_t value = 0;
  for (size_t i = 0; i < len; i++) {
    if (text[i] < '0' || text[i] > '9') return false;
    uint8_t digit = (uint8_t)(text[i] - '0');
    if (value > (UINT64_MAX - digit) / 10) return false;  // would overflow
    value = value * 10 + digit;
  }
  out = value;
  return true;
}

// 1 to 20 digits without a leading zero, 1..2^64-1.
static bool parseChainId(const char *text, uint64_t &out) {
  return parseUint64(text, out) && out != 0;
}

// Sends "$<body>*<CRC>\n".
static void sendFrame(const char *body) {
  char tail[6];
  snprintf(tail, sizeof tail, "*%04X", (unsigned)crc16(body, strlen(body)));
  Serial.write('$');
  Serial.print(body);
  Serial.print(tail);
  Serial.write('\n');
}

static void sendError(uint16_t seq, uint8_t code) {
  char body[40];
  snprintf(body, sizeof body, "%u,ERR,%u,%s", (unsigned)seq, (unsigned)code, ERROR_TEXT[code]);
  sendFrame(body);
}

static void setRelay(bool closed) {
  relayClosed = closed;
  digitalWrite(RELAY_PIN, closed == RELAY_ACTIVE_HIGH ? HIGH : LOW);
}

// ---- Sensor and counter ------------------------------------------------------------------------

static bool writeRegister(uint8_t reg, uint16_t value) {
  Wire.beginTransmission(INA226_ADDRESS);
  Wire.write(reg);
  Wire.write((uint8_t)(value >> 8));
  Wire.write((uint8_t)(value & 0xFF));
  return Wire.endTransmission() == 0;
}

static bool readRegister(uint8_t reg, uint16_t &value) {
  Wire.beginTransmission(INA226_ADDRESS);
  Wire.write(reg);
  if (Wire.endTransmission(false) != 0) return false;
  if (Wire.requestFrom(INA226_ADDRESS, (uint8_t)2) != 2) return false;
  uint16_t high = (uint16_t)Wire.read();  // two statements: the byte order must be fixed
  uint16_t low = (uint16_t)Wire.read();
  value = (uint16_t)((high << 8) | low);
  return true;
}

// One sample over the last `elapsedMs`: only forward (positive) power counts as energy.
static void sample(uint32_t elapsedMs) {
  uint16_t shunt, bus;
  if (!readRegister(0x01, shunt) || !readRegister(0x02, bus)) {
    sensorOk = false;  // READ answers ERR 6; energy in the gap is not counted
    return;
  }
  sensorOk = true;
  samples++;
  busMillivolts = (int32_t)bus * 125 / 100;                                  // 1.25 mV/bit
  currentMilliamps = (int32_t)((int64_t)(int16_t)shunt * 2500 / SHUNT_MICROOHM);  // 2.5 uV/bit
  powerMilliwatts = (int32_t)((int64_t)busMillivolts * currentMilliamps / 1000);
  if (powerMilliwatts > 0) {
    residualMicrojoules += (uint64_t)powerMilliwatts * elapsedMs;  // mW x ms = uJ
    while (residualMicrojoules >= MICROJOULES_PER_WH) {
      residualMicrojoules -= MICROJOULES_PER_WH;
      energyWh++;
    }
  }
}

// ---- EEPROM: counter, sequence, key, domain ----------------------------------------------------

// Boards whose "EEPROM" is emulated in flash keep changes in RAM until commit().
static void eepromCommit() {
#if defined(ARDUINO_ARCH_ESP32) || defined(ARDUINO_ARCH_RP2040)
  EEPROM.commit();
#endif
}

// The largest value in `slots` uint32 slots from `base` (erased slots read 0xFFFFFFFF).
static uint32_t largestSlot(int base, uint8_t slots) {
  uint32_t best = 0;
  for (uint8_t i = 0; i < slots; i++) {
    uint32_t value;
    EEPROM.get(base + i * 4, value);
    if (value != 0xFFFFFFFFUL && value > best) best = value;
  }
  return best;
}

// The counter survives a reset: it resumes at the last value saved, which is at least the last
// value signed (energy not yet saved is lost, never invented).
static void loadEnergy() { energyWh = savedWh = largestSlot(EE_COUNTER, EEPROM_SLOTS); }

static void writeEnergy() {
  EEPROM.put(EE_COUNTER + (int)((energyWh / EEPROM_STEP_WH) % EEPROM_SLOTS) * 4, energyWh);
  eepromCommit();
  savedWh = energyWh;
}

// Every 10 Wh, so a power cut loses at most 10 Wh of unsigned energy.
static void saveEnergy() {
  if (energyWh - savedWh >= EEPROM_STEP_WH) writeEnergy();
}

// Sequence numbers up to the one recorded may have been used before a power cut: skip them all.
static void loadSequence() { lastSequence = reservedSequence = largestSlot(EE_SEQUENCE, SEQUENCE_SLOTS); }

// The next sequence number, recorded in EEPROM (256 at a time) before any reading carries it.
static bool nextSequence(uint32_t &sequence) {
  if (lastSequence == 0xFFFFFFFEUL) return false;  // exhausted (after 4e9 readings)
  if (lastSequence + 1 > reservedSequence) {
    uint32_t reserve = lastSequence + SEQUENCE_STEP;
    if (reserve < lastSequence || reserve == 0xFFFFFFFFUL) reserve = 0xFFFFFFFEUL;
    EEPROM.put(EE_SEQUENCE + (int)((reserve / SEQUENCE_STEP) % SEQUENCE_SLOTS) * 4, reserve);
    eepromCommit();
    reservedSequence = reserve;
  }
  sequence = ++lastSequence;
  return true;
}

static uint16_t crcBytes(const uint8_t *data, size_t len) { return crc16((const char *)data, len); }

// The key is made once, at first boot (no valid key record), and never changes afterwards.
static void loadKey() {
  KeyRecord record;
  EEPROM.get(EE_KEY, record);
  keyOk = record.magic == KEY_MAGIC && record.crc == crcBytes(record.privateKey, 32);
  if (!keyOk) {
    if (!meterKeyGenerate(record.privateKey)) return;  // no random generator: READ says ERR 9
    record.magic = KEY_MAGIC;
    record.crc = crcBytes(record.privateKey, 32);
    EEPROM.put(EE_KEY, record);
    eepromCommit();
  }
  uint8_t publicKey[64], hash[32];
  keyOk = meterPublicKey(record.privateKey, publicKey);
  if (!keyOk) return;
  memcpy(privateKey, record.privateKey, 32);
  memset(record.privateKey, 0, 32);
  keccak256(publicKey, 64, hash);
  memcpy(meterAddress, hash + 12, 20);  // the Ethereum address: the last 20 bytes
}

static void loadDomain() {
  DomainRecord record;
  EEPROM.get(EE_DOMAIN, record);
  provisioned = record.magic == DOMAIN_MAGIC && record.crc == crcBytes(record.data, 28);
  chainId = 0;
  memset(registry, 0, sizeof registry);
  if (!provisioned) return;
  for (uint8_t i = 0; i < 8; i++) chainId = (chainId << 8) | record.data[i];
  memcpy(registry, record.data + 8, 20);
  eip712DomainSeparator(chainId, registry, domainSeparator);
}

static void saveDomain() {
  DomainRecord record;
  record.magic = DOMAIN_MAGIC;
  for (uint8_t i = 0; i < 8; i++) record.data[i] = (uint8_t)(chainId >> (56 - 8 * i));
  memcpy(record.data + 8, registry, 20);
  record.crc = crcBytes(record.data, 28);
  EEPROM.put(EE_DOMAIN, record);
  eepromCommit();
}

// ---- Protocol ----------------------------------------------------------------------------------

// Handles one complete line (without LF), in the order of PROTOCOL.md "Receiving".
static void handleLine() {
  if (lineLen > 0 && line[lineLen - 1] == '\r') lineLen--;
  if (lineLen == 0) return;  // empty lines are ignored
  if (lineLen < 6 || line[0] != '$' || line[lineLen - 5] != '*') return sendError(0, ERR_FRAME);
  for (uint8_t i = 0; i < lineLen; i++) {
    char c = line[i];
    bool inBody = i >= 1 && i < lineLen - 5;
    if (c < 0x20 || c > 0x7E || (inBody && (c == '$' || c == '*')) ||
        (i > lineLen - 5 && !isUpperHex(c))) {
      return sendError(0, ERR_FRAME);
    }
  }
  if (crc16(line + 1, lineLen - 6) != hexValue(line + lineLen - 4)) {
    return sendError(0, ERR_CHECKSUM);
  }

  line[lineLen - 5] = '\0';  // the body is now a C string; split it at the commas
  char *fields[4];
  uint8_t count = 0;
  fields[count++] = line + 1;
  for (char *p = line + 1; *p; p++) {
    if (*p != ',') continue;
    *p = '\0';
    if (count < 4) fields[count] = p + 1;
    if (count < 255) count++;
  }
  int32_t seq = parseSeq(fields[0]);
  if (count < 2 || seq < 1 || !isCommandName(fields[1])) return sendError(0, ERR_FRAME);
  const char *name = fields[1];
  uint8_t args = count - 2;

  static char body[MAX_REPLY + 1];  // static: kept off the stack, which signing needs
  if (strcmp(name, "ID") == 0) {
    if (args != 0) return sendError((uint16_t)seq, ERR_ARGUMENT);
    int len = snprintf(body, sizeof body, "%u,OK,ID,%s,%s,%s,%lu,%lu,3,", (unsigned)seq,
                       METER_ID, FIRMWARE_VERSION, METER_KIND, (unsigned long)RATED_POWER_W,
                       (unsigned long)WATCHDOG_S);
    char *end = appendHex(body + len, meterAddress, 20);  // all zero if there is no key
    *end++ = ',';
    *end++ = provisioned ? '1' : '0';
    *end++ = ',';
    end = appendUint64(end, chainId);
    *end++ = ',';
    appendHex(end, registry, 20);
  } else if (strcmp(name, "READ") == 0) {
    // The host's recent block: signed with the counter, so the reading cannot predate it.
    uint64_t blockNumber;
    uint8_t blockHash[32];
    if (args != 2 || !parseUint64(fields[2], blockNumber) ||
        !parseHexBytes(fields[3], blockHash, 32)) {
      return sendError((uint16_t)seq, ERR_ARGUMENT);
    }
    if (!keyOk) return sendError((uint16_t)seq, ERR_KEY);
    if (!provisioned) return sendError((uint16_t)seq, ERR_NOT_PROVISIONED);
    if (!sensorOk) return sendError((uint16_t)seq, ERR_SENSOR);
    // The signed counter is saved first, so after a power cut it never resumes below it.
    if (energyWh != savedWh) writeEnergy();
    uint32_t sequence;
    uint8_t digest[32], signature[65];
    if (!nextSequence(sequence)) return sendError((uint16_t)seq, ERR_KEY);
    eip712ReadingDigest(domainSeparator, meterAddress, energyWh, sequence, blockNumber, blockHash,
                        digest);
    if (!meterSign(privateKey, digest, signature)) return sendError((uint16_t)seq, ERR_KEY);
    char power[16], volts[16], amps[16];
    int len = snprintf(body, sizeof body, "%u,OK,READ,%lu,%s,%s,%s,%c,%lu,%lu,", (unsigned)seq,
                       (unsigned long)energyWh, fixed(power, sizeof power, powerMilliwatts, 1),
                       fixed(volts, sizeof volts, busMillivolts, 2),
                       fixed(amps, sizeof amps, currentMilliamps, 3), relayClosed ? '1' : '0',
                       (unsigned long)samples, (unsigned long)sequence);
    appendHex(body + len, signature, 65);
  } else if (strcmp(name, "INSTALL") == 0) {
    // Once: the first valid INSTALL fixes the domain; the same values again are answered OK.
    uint64_t newChainId;
    uint8_t newRegistry[20];
    if (args != 2 || !parseChainId(fields[2], newChainId) ||
        !parseAddress(fields[3], newRegistry)) {
      return sendError((uint16_t)seq, ERR_ARGUMENT);
    }
    if (!provisioned) {
      chainId = newChainId;
      memcpy(registry, newRegistry, 20);
      saveDomain();
      eip712DomainSeparator(chainId, registry, domainSeparator);
      provisioned = true;
    } else if (chainId != newChainId || memcmp(registry, newRegistry, 20) != 0) {
      return sendError((uint16_t)seq, ERR_PROVISIONED);
    }
    int len = snprintf(body, sizeof body, "%u,OK,INSTALL,", (unsigned)seq);
    char *end = appendUint64(body + len, chainId);
    *end++ = ',';
    appendHex(end, registry, 20);
  } else if (strcmp(name, "RELAY") == 0) {
    // Idempotent: "1" closes, "0" opens, whatever the state was; there is no toggle.
    if (args != 1 || strlen(fields[2]) != 1 || (fields[2][0] != '0' && fields[2][0] != '1')) {
      return sendError((uint16_t)seq, ERR_ARGUMENT);
    }
    setRelay(fields[2][0] == '1');
    snprintf(body, sizeof body, "%u,OK,RELAY,%c", (unsigned)seq, relayClosed ? '1' : '0');
  } else if (strcmp(name, "HB") == 0) {
    if (args != 0) return sendError((uint16_t)seq, ERR_ARGUMENT);
    snprintf(body, sizeof body, "%u,OK,HB,%c", (unsigned)seq, relayClosed ? '1' : '0');
  } else {
    return sendError((uint16_t)seq, ERR_UNKNOWN);
  }
  lastValidMs = millis();  // only a command answered OK feeds the watchdog
  sendFrame(body);
}

static void receive(char c) {
  if (c == '\n') {
    if (lineOverflow) sendError(0, ERR_TOO_LONG);
    else handleLine();
    lineLen = 0;
    lineOverflow = false;
  } else if (!lineOverflow) {
    if (lineLen == MAX_LINE) lineOverflow = true;  // drop everything up to the next LF
    else line[lineLen++] = c;
  }
}

// ---- Arduino entry points ----------------------------------------------------------------------

void setup() {
  pinMode(RELAY_PIN, OUTPUT);
  setRelay(false);  // power-on state: open, no unpaid power before the host says so
  lineLen = 0;
  lineOverflow = false;
  samples = 0;
  sensorOk = false;
  busMillivolts = currentMilliamps = powerMilliwatts = 0;
  residualMicrojoules = 0;
  Serial.begin(115200);
#if defined(ARDUINO_ARCH_ESP32) || defined(ARDUINO_ARCH_RP2040)
  EEPROM.begin(EEPROM_SIZE);  // flash-emulated EEPROM
#endif
  Wire.begin();
  writeRegister(0x00, 0x4527);  // INA226: average 16 samples, 1.1 ms conversions, continuous
  loadEnergy();
  loadSequence();
  loadKey();
  loadDomain();
  lastSampleMs = lastValidMs = millis();
}

void loop() {
  while (Serial.available() > 0) receive((char)Serial.read());
  uint32_t now = millis();
  if (now - lastSampleMs >= SAMPLE_MS) {
    sample(now - lastSampleMs);
    lastSampleMs = now;
    saveEnergy();
  }
  if (relayClosed && now - lastValidMs >= WATCHDOG_S * 1000UL) setRelay(false);  // watchdog
}
