// The part of HBase's Thrift1 gateway (org.apache.hadoop.hbase.thrift,
// "Hbase" service, binary protocol, buffered transport) that Carrier calls.
//
// Written for Carrier from the protocol's facts: method names, argument and
// field ids, and types must match the server's; everything Carrier does not
// call is left out (a Thrift peer skips what it does not know). Rust is
// generated from this file by thrift/generate.sh into
// src/store/hbase/wire.rs, which is committed and checked by CI.
//
// `checkAndPut` with an empty expected value (field 5) matches a cell
// that does not exist (or is empty): that is how Carrier inserts a row
// only if it is absent.

namespace rs carrier_hbase

typedef binary Text
typedef binary Bytes
typedef i32 ScannerID

struct TCell {
  1: Bytes value,
  2: i64 timestamp
}

struct ColumnDescriptor {
  1: Text name,
  2: i32 maxVersions = 3,
  3: string compression = "NONE",
  4: bool inMemory = 0,
  5: string bloomFilterType = "NONE",
  6: i32 bloomFilterVectorSize = 0,
  7: i32 bloomFilterNbHashes = 0,
  8: bool blockCacheEnabled = 0,
  9: i32 timeToLive = 0x7fffffff
}

struct Mutation {
  1: bool isDelete = 0,
  2: Text column,
  3: Text value,
  4: bool writeToWAL = 1
}

struct BatchMutation {
  1: Text row,
  2: list<Mutation> mutations
}

struct TColumn {
  1: Text columnName,
  2: TCell cell
}

struct TRowResult {
  1: Text row,
  2: optional map<Text, TCell> columns,
  3: optional list<TColumn> sortedColumns
}

struct TScan {
  1: optional Text startRow,
  2: optional Text stopRow,
  3: optional i64 timestamp,
  4: optional list<Text> columns,
  5: optional i32 caching,
  6: optional Text filterString,
  7: optional i32 batchSize,
  8: optional bool sortColumns,
  9: optional bool reversed,
  10: optional bool cacheBlocks
}

exception IOError {
  1: string message,
  2: bool canRetry
}

exception IllegalArgument {
  1: string message
}

exception AlreadyExists {
  1: string message
}

service Hbase {
  list<Text> getTableNames()
    throws (1: IOError io)

  void createTable(1: Text tableName, 2: list<ColumnDescriptor> columnFamilies)
    throws (1: IOError io, 2: IllegalArgument ia, 3: AlreadyExists exist)

  list<TCell> get(1: Text tableName, 2: Text row, 3: Text column, 4: map<Text, Text> attributes)
    throws (1: IOError io)

  // The rows that exist among `rows`, with only `columns`: one round trip
  // for many gets.
  list<TRowResult> getRowsWithColumns(1: Text tableName, 2: list<Text> rows,
                                      3: list<Text> columns, 4: map<Text, Text> attributes)
    throws (1: IOError io)

  void mutateRows(1: Text tableName, 2: list<BatchMutation> rowBatches, 3: map<Text, Text> attributes)
    throws (1: IOError io, 2: IllegalArgument ia)

  // Like mutateRows, with every cell written at `timestamp` and every delete
  // removing only versions at or before it.
  void mutateRowsTs(1: Text tableName, 2: list<BatchMutation> rowBatches, 3: i64 timestamp,
                    4: map<Text, Text> attributes)
    throws (1: IOError io, 2: IllegalArgument ia)

  i64 atomicIncrement(1: Text tableName, 2: Text row, 3: Text column, 4: i64 value)
    throws (1: IOError io, 2: IllegalArgument ia)

  ScannerID scannerOpenWithScan(1: Text tableName, 2: TScan scan, 3: map<Text, Text> attributes)
    throws (1: IOError io)

  list<TRowResult> scannerGetList(1: ScannerID id, 2: i32 nbRows)
    throws (1: IOError io, 2: IllegalArgument ia)

  void scannerClose(1: ScannerID id)
    throws (1: IOError io, 2: IllegalArgument ia)

  bool checkAndPut(1: Text tableName, 2: Text row, 3: Text column, 5: Text value,
                   6: Mutation mput, 7: map<Text, Text> attributes)
    throws (1: IOError io, 2: IllegalArgument ia)
}
