"use strict";
// The CommonJS build's loader: plain require, from where the package is installed.
exports.loadPeer = function loadPeer(name) {
  return require(name);
};
